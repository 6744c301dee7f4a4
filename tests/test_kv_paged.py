"""kv_cache=paged at the store level: kernels (wide vs scalar, vs the contiguous f32 reference), q8 layout,
bookkeeping (no page leaked after 1,000 mixed operations), prefix sharing, copy-on-write, LRU eviction,
compaction, config and registration.  Synthetic K/V: the real-model part is tests/test_batching.py."""
from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from corert.errors import ConfigError, InputError, PluginError
from corert.plugins.kv_cache.contiguous import ContiguousKVStore
from corert.plugins.kv_cache.paged.config import KERNELS, PagedConfig, parse_bytes
from corert.plugins.kv_cache.paged.kernels import ATTEND
from corert.plugins.kv_cache.paged.rotation import rotate, rotation_block
from corert.plugins.kv_cache.paged.writes import f16_bits, quantize_q8
from corert.plugins.kv_cache.paged.store import PagedKVStore, page_bytes

L, KV, H, HD = 2, 2, 6, 64
F16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float64)
DTYPES = ("f32", "f16", "q8")
#: max |paged - contiguous f32| of attention outputs on N(0,1) data: f16 / q8 rounding of K and V
TOL = {"f32": 1e-5, "f16": 3e-3, "q8": 4e-2}


def _store(dtype="q8", kernel="wide", page=16, n_seqs=4, max_tokens=256, budget=None):
    return PagedKVStore(PagedConfig(dtype=dtype, kernel=kernel, page_tokens=page, budget_bytes=budget),
                        L, KV, HD, max_tokens, n_seqs)


def _fill(stores, lens, rng, start=None):
    """One pass writing ``lens[s]`` new rows to sequence s of every store; returns (seq_ids, positions,
    per-layer q) and the outputs of attend per store."""
    start = start or {}
    sid = np.concatenate([np.full(n, s, np.int32) for s, n in enumerate(lens)])
    pos = np.concatenate([np.arange(start.get(s, 0), start.get(s, 0) + n) for s, n in enumerate(lens)]
                         ).astype(np.int32)
    ids = (sid * 1000 + pos).astype(np.int64)  # distinct token ids per position
    for st in stores:
        if isinstance(st, PagedKVStore):
            st.reserve(sid, pos, token_ids=ids)
        else:
            st.reserve(sid, pos)
    outs = [[] for _ in stores]
    for layer in range(L):
        k = rng.standard_normal((len(sid), KV, HD)).astype(np.float32)
        v = rng.standard_normal((len(sid), KV, HD)).astype(np.float32)
        q = rng.standard_normal((len(sid), H, HD)).astype(np.float32)
        for st, o in zip(stores, outs):
            st.write(layer, sid, pos, k, v)
            out = np.empty_like(q)
            st.attend(layer, sid, pos, q, 0.125, out)
            o.append(out)
    return sid, pos, outs


#: every kernel variant of the dispatch table: a new one is tested without editing this file
OTHERS = [k for k in ATTEND if k != "scalar"]


def test_every_kernel_variant_is_configurable_and_complete():
    assert set(ATTEND) == set(KERNELS) and "scalar" in ATTEND
    assert all(set(table) == set(DTYPES) for table in ATTEND.values())


@pytest.mark.parametrize("kernel", OTHERS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_paged_attention_matches_contiguous_and_scalar(dtype, kernel):
    rng = np.random.default_rng(1)
    other, scalar = _store(dtype, kernel), _store(dtype, "scalar")
    ref = ContiguousKVStore(L, KV, HD, 256, 4, "f32")
    for st in (other, scalar, ref):
        for _ in range(3):
            st.new_sequence()
    start = {}
    for lens in ([20, 7, 33], [1, 1, 1], [16, 17, 5]):  # ragged prefill, decode, crossing page borders
        _, pos, (oo, os_, oref) = _fill([other, scalar, ref], lens, rng, start)
        start = {s: other.length(s) for s in range(3)}
        for a, b, c in zip(oo, os_, oref):
            np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)  # variants agree (sum order only)
            assert np.abs(a - c).max() < TOL[dtype]
            assert np.abs(b - c).max() < TOL[dtype]
    other.check()


def test_q8_pages_are_int8_with_f16_scales_and_no_second_copy():
    st = _store("q8")
    arrays = {k: v for k, v in vars(st).items() if isinstance(v, np.ndarray)}
    assert st.k.dtype == np.int8 and st.v.dtype == np.int8 and st.ks.dtype == np.uint16
    # float arrays allowed: per-channel key smoothing, (layer, kv_head, head_dim) — nothing per token
    floats = [n for n, a in arrays.items() if a.dtype.kind == "f" and a.size > L * KV * HD]
    assert floats == [], f"float K/V arrays in a q8 store: {floats}"
    ratio = page_bytes(PagedConfig("q8"), L, KV, HD) / page_bytes(PagedConfig("f32"), L, KV, HD)
    assert ratio <= 0.27
    assert st.nbytes() == st.n_pages * st.page_bytes


def test_quantize_q8_roundtrip():
    x = np.random.default_rng(2).standard_normal((5, KV, HD)).astype(np.float32)
    x[0, 0, :32] = 0.0  # an all-zero block: scale 0, no division by zero
    q, d = quantize_q8(x)
    back = q.reshape(5, KV, 2, 32).astype(np.float32) * d.view(np.float16).astype(np.float32)[..., None]
    err = np.abs(back.reshape(x.shape) - x)
    assert err.max() <= np.abs(x).max() / 127 * 0.6 + 1e-3
    assert not q[0, 0, :32].any()


def _coded_store(dtype, kernel="wide", seed=8):
    """A store whose q8 basis is not the identity (centring, weights and a sink key on every layer)."""
    rng = np.random.default_rng(seed)
    st = _store(dtype, kernel)
    if st.coding is not None:
        for layer in range(L):
            st.coding.set(layer, rng.standard_normal((KV, HD)).astype(np.float32),
                          rng.lognormal(0.0, 0.5, (KV, HD)).astype(np.float32),
                          rng.standard_normal((KV, HD)).astype(np.float32))
    return st


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_write_kernel_stores_what_the_numpy_reference_computes(dtype):
    rng = np.random.default_rng(9)
    st = _coded_store(dtype)
    for _ in range(3):
        st.new_sequence()
    sid = np.repeat(np.arange(3, dtype=np.int32), 21)
    pos = np.tile(np.arange(21, dtype=np.int32), 3)  # position 0 (stored against the sink key) and page borders
    st.reserve(sid, pos)
    pages, slots = st.table[sid, pos // st.page_tokens], pos % st.page_tokens
    for layer in range(L):
        k = (rng.standard_normal((len(sid), KV, HD)) * 4).astype(np.float32)
        v = rng.standard_normal((len(sid), KV, HD)).astype(np.float32)
        k[0, 0, :32] = 0.0  # an all-zero block: scale 0
        st.write(layer, sid, pos, k, v)
        if dtype == "q8":
            c = st.coding
            want = quantize_q8(c.keys(layer, pos, k)) + quantize_q8(c.values(v))
            got = [a[layer][pages, :, slots] for a in (st.k, st.ks, st.v, st.vs)]
        elif dtype == "f16":
            want = [k.astype(np.float16).view(np.uint16), v.astype(np.float16).view(np.uint16)]
            got = [st.k[layer][pages, :, slots], st.v[layer][pages, :, slots]]
        else:
            want, got = [k, v], [st.k[layer][pages, :, slots], st.v[layer][pages, :, slots]]
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


@njit(cache=True)
def _f16_all(bits, out):
    for i in range(bits.shape[0]):
        out[i] = f16_bits(bits[i])


def test_f16_bits_rounds_like_numpy():
    rng = np.random.default_rng(10)
    edges = np.array([0x477FEFFF, 0x477FF000, 0x477FE000, 0x38800000, 0x387FFFFF, 0x33000000, 0x33000001,
                      0x32FFFFFF, 0x33800000, 0x7F800000, 0x00000001, 0x3F800000], np.uint32)
    # every f32 exponent from f16's subnormals to past its largest value, random mantissas; random patterns
    span = np.arange(0x32000000, 0x48000000, 0x1001, dtype=np.uint32)
    bits = np.concatenate([edges, span, rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32)])
    bits = np.concatenate([bits, bits | np.uint32(0x80000000)])
    got = np.empty(len(bits), np.uint16)
    _f16_all(bits, got)
    x = bits.view(np.float32)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert np.isnan(got[nan].view(np.float16)).all()


@pytest.mark.parametrize("kernel", list(ATTEND))
def test_q8_attention_equals_its_numpy_reference(kernel):
    """The kernels code the queries and decode the outputs themselves; numpy does it step by step here."""
    rng = np.random.default_rng(11)
    st = _coded_store("q8", kernel)
    lens = [1, 17, 40]
    for _ in lens:
        st.new_sequence()
    sid, pos, (outs,) = _fill([st], lens, rng)
    c, P = st.coding, st.page_tokens
    for layer in range(L):
        q = rng.standard_normal((len(sid), H, HD)).astype(np.float32)
        got = np.empty_like(q)
        st.attend(layer, sid, pos, q, 0.125, got)
        want = c.queries(layer, q).astype(np.float64)
        group = H // KV
        for i, (s, p) in enumerate(zip(sid, pos)):
            t = np.arange(p + 1)
            pages, slots = st.table[s, t // P], t % P

            def pages_of(x, xs):
                scale = F16[xs[layer][pages, :, slots]]  # (t, kv, blocks)
                return (x[layer][pages, :, slots].astype(np.float64).reshape(len(t), KV, -1, 32)
                        * scale[..., None]).reshape(len(t), KV, HD)

            keys, values = pages_of(st.k, st.ks), pages_of(st.v, st.vs)
            for h in range(H):
                g = h // group
                scores = keys[:, g] @ want[i, h]
                scores[0] += c.sink[layer, g] @ want[i, h]
                e = np.exp((scores - scores.max()) * 0.125)
                want[i, h] = (e / e.sum()) @ values[:, g]
        want = want.astype(np.float32)
        c.outputs(want)
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kernel", list(ATTEND))
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_rows_attention_does_not_depend_on_the_batch(dtype, kernel):
    rng = np.random.default_rng(12)
    st = _coded_store(dtype, kernel)
    lens = [5, 23, 40, 2]
    for _ in lens:
        st.new_sequence()
    sid, pos, _ = _fill([st], lens, rng)
    q = rng.standard_normal((len(sid), H, HD)).astype(np.float32)
    whole = np.empty_like(q)
    st.attend(1, sid, pos, q, 0.125, whole)
    for rows in ([7], [60, 3, 30], list(range(len(sid) - 1, -1, -4))):
        part = np.empty((len(rows), H, HD), np.float32)
        st.attend(1, sid[rows], pos[rows], np.ascontiguousarray(q[rows]), 0.125, part)
        np.testing.assert_array_equal(part, whole[rows])


@pytest.mark.parametrize("kernel", list(ATTEND))
def test_verify_rows_of_one_context_equal_each_row_alone(kernel):
    """A verify step's rows (a stream's pending row and its drafts, over one context, across page borders;
    11 rows: more than one tile of the wide q8 kernel) give each row the bits it gets alone."""
    rng = np.random.default_rng(13)
    st = _coded_store("q8", kernel)
    ctx = [14, 30, 45]
    for _ in ctx:
        st.new_sequence()
    _fill([st], ctx, rng)
    rows = [5, 11, 3]
    sid, pos, _ = _fill([st], rows, rng, dict(enumerate(ctx)))
    q = rng.standard_normal((len(sid), H, HD)).astype(np.float32)
    whole = np.empty_like(q)
    st.attend(0, sid, pos, q, 0.125, whole)
    for i in range(len(sid)):
        alone = np.empty((1, H, HD), np.float32)
        st.attend(0, sid[i:i + 1], pos[i:i + 1], np.ascontiguousarray(q[i:i + 1]), 0.125, alone)
        np.testing.assert_array_equal(alone[0], whole[i])


def test_sequence_tiles_cut_each_sequences_run_into_even_tiles():
    from corert.kernels.tree_rows import sequence_tiles

    def sizes(ids, cap=8):
        return np.diff(sequence_tiles(np.asarray(ids, np.int32), cap)).tolist()
    assert sizes([0] * 9) == [4, 5]  # a lone stream's 9 verify rows: both threads get a tile
    assert sizes([0] * 8 + [1] * 3 + [2]) == [8, 3, 1]
    assert sizes([0, 1, 0, 1]) == [1, 1, 1, 1]  # a tile never spans two runs
    assert sizes([0] * 17) == [5, 6, 6] and sizes([0] * 5, cap=1) == [1] * 5
    assert sum(sizes([0] * 454)) == 454 and max(sizes([0] * 454)) == 8


def test_no_page_leaked_after_1000_mixed_operations():
    rng = np.random.default_rng(3)
    # 20 pages of 4 tokens for 6 sequences of up to 64: the pool runs out, idle sequences get evicted
    st = _store("q8", page=4, n_seqs=6, max_tokens=64, budget=20 * page_bytes(PagedConfig("q8", page_tokens=4),
                                                                             L, KV, HD))
    live: dict[int, list[int]] = {}
    prompts = [list(rng.integers(0, 50, 40)) for _ in range(3)]  # shared prefixes recur
    ops = {"start": 0, "extend": 0, "finish": 0, "cancel": 0, "truncate": 0, "evicted": 0}
    for _ in range(1000):
        op = rng.choice(["start", "extend", "extend", "finish", "cancel", "truncate"])
        if op == "start" and len(live) < st.n_seqs:
            s = st.new_sequence()
            ids = prompts[rng.integers(3)][:rng.integers(1, 40)] + [int(rng.integers(50))]
            n = st.match_prefix(s, ids)
            live[s] = ids[:n]
            rest = ids[n:]
            try:
                st.reserve(np.full(len(rest), s, np.int32), np.arange(n, len(ids), dtype=np.int32),
                           token_ids=np.asarray(rest))
                live[s] = ids
            except InputError as exc:
                assert "KV cache full" in str(exc)
        elif op == "extend" and live:
            s = int(rng.choice(list(live)))
            if st.evicted(s) or st.length(s) < len(live[s]):
                ops["evicted"] += 1
                live[s] = live[s][:st.length(s)]
            m = min(int(rng.integers(1, 6)), st.max_tokens - len(live[s]))
            if m <= 0:
                continue
            new = [int(t) for t in rng.integers(0, 50, m)]
            try:
                st.reserve(np.full(m, s, np.int32), np.arange(len(live[s]), len(live[s]) + m, dtype=np.int32),
                           token_ids=np.asarray(new))
                live[s] += new
            except InputError as exc:
                assert "KV cache full" in str(exc)
        elif op in ("finish", "cancel") and live:
            s = int(rng.choice(list(live)))
            st.release(s)
            del live[s]
        elif op == "truncate" and live:
            s = int(rng.choice(list(live)))
            n = int(rng.integers(0, st.length(s) + 1))
            st.truncate(s, n)
            live[s] = live[s][:n]
        else:
            continue
        ops[op] += 1
        st.check()
        for s, ids in live.items():
            assert st.length(s) == len(ids) or st.evicted(s)
    assert ops["start"] > 100 and ops["finish"] + ops["cancel"] > 100
    for s in list(live):
        st.release(s)
    st.check()
    stats = st.stats()
    assert stats["pages_used"] == 0 and stats["pages_free"] == st.n_pages, stats
    assert stats["prefix_hits"] > 0 and stats["cow_copies"] > 0 and stats["evictions"] > 0, stats


def test_prefix_pages_are_shared_and_copied_on_write():
    rng = np.random.default_rng(4)
    st = _store("f32", page=16)
    a = st.new_sequence()
    ids = np.arange(40)
    st.reserve(np.full(40, a, np.int32), np.arange(40, dtype=np.int32), token_ids=ids)
    for layer in range(L):
        st.write(layer, np.full(40, a, np.int32), np.arange(40, dtype=np.int32),
                 rng.standard_normal((40, KV, HD)).astype(np.float32),
                 rng.standard_normal((40, KV, HD)).astype(np.float32))
    q = rng.standard_normal((40, H, HD)).astype(np.float32)
    before = np.empty_like(q)
    st.attend(1, np.full(40, a, np.int32), np.arange(40, dtype=np.int32), q, 0.125, before)

    b = st.new_sequence()
    assert st.match_prefix(b, list(ids) + [7]) == 32  # two full pages; the partial third is not shared
    assert st.seqs[b].pages == st.seqs[a].pages[:2]
    assert st.stats()["shared_pages"] == 2
    used = st.pool.used
    st.truncate(b, 20)  # diverge inside the shared second page
    st.reserve(np.array([b], np.int32), np.array([20], np.int32), token_ids=np.array([999]))
    assert st.pool.used == used + 1 and st.counters["cow_copies"] == 1
    assert st.seqs[b].pages[0] == st.seqs[a].pages[0] and st.seqs[b].pages[1] != st.seqs[a].pages[1]
    for layer in range(L):  # b's write lands in its copy: a's K/V must not change
        st.write(layer, np.array([b], np.int32), np.array([20], np.int32),
                 np.full((1, KV, HD), 9.0, np.float32), np.full((1, KV, HD), 9.0, np.float32))
    after = np.empty_like(q)
    st.attend(1, np.full(40, a, np.int32), np.arange(40, dtype=np.int32), q, 0.125, after)
    np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(st.k[:, st.seqs[b].pages[1], :, :4], st.k[:, st.seqs[a].pages[1], :, :4])
    st.check()


def test_pages_are_shared_only_for_the_paths_their_rows_took():
    """A page holding a row an engine computed on its exact path (reserve's ``exact``: native amx-bf16's
    logit rows, whose bits differ from its bulk path's) is shared only with a match that wants that row exact
    (a recomputed sequence's own history), never with a new prompt (all its matched rows bulk).  Rolling
    back past the row, or a tree slot kept to a new position, carries its path along."""
    st = _store("f32", page=16)
    a = st.new_sequence()
    ids = np.arange(48)
    exact = np.zeros(48, np.bool_)
    exact[20] = True  # in the second page
    st.reserve(np.full(48, a, np.int32), np.arange(48, dtype=np.int32), token_ids=ids, exact=exact)
    b = st.new_sequence()
    assert st.match_prefix(b, list(ids) + [7]) == 16  # a new prompt's: the match stops at the second page
    st.truncate(b, 0)
    assert st.match_prefix(b, list(ids) + [7], exact=list(exact)) == 48  # a's own paths: every page
    assert st.seqs[b].pages == st.seqs[a].pages and st.seqs[b].exact == {20}
    st.release(b)
    st.truncate(a, 18)  # the exact row is gone: the second page, full again, holds bulk rows only
    st.reserve(np.full(30, a, np.int32), np.arange(18, 48, dtype=np.int32), token_ids=ids[18:])
    c = st.new_sequence()
    assert st.match_prefix(c, list(ids) + [7]) == 48
    st.release(c)
    # a tree: slots 48..51 provisional, 50 exact; keeping slots 50, 51 moves its path to position 48
    st.reserve(np.full(4, a, np.int32), np.arange(48, 52, dtype=np.int32), provisional=True,
               exact=np.array([False, False, True, False]))
    st.keep_path(a, 48, [50, 51], token_ids=[100, 101])
    assert st.seqs[a].exact == {48}
    st.check()


def test_lru_eviction_and_a_request_too_big_for_the_pool():
    pb = page_bytes(PagedConfig("q8"), L, KV, HD)
    st = _store("q8", page=16, n_seqs=3, max_tokens=256, budget=6 * pb)  # 6 pages
    assert st.n_pages == 6
    a, b, c = (st.new_sequence() for _ in range(3))
    for s in (a, b):  # 2 pages each; a is the least recently used
        st.reserve(np.full(32, s, np.int32), np.arange(32, dtype=np.int32), token_ids=np.arange(32) + 100 * s)
    st.reserve(np.full(40, c, np.int32), np.arange(40, dtype=np.int32))  # 3 pages: one sequence must go
    assert st.evicted(a) and st.length(a) == 0 and not st.evicted(b) and st.length(b) == 32
    assert st.stats()["evictions"] == 1
    st.check()
    with pytest.raises(InputError, match="KV cache full"):
        st.reserve(np.full(100, c, np.int32), np.arange(40, 140, dtype=np.int32))  # 9 pages > 6
    assert st.length(c) == 40  # a failed reserve changes nothing of the busy sequence


def test_compaction_keeps_outputs_bit_identical():
    rng = np.random.default_rng(5)
    st = _store("q8", page=4, n_seqs=4, max_tokens=128)
    for _ in range(4):
        st.new_sequence()
    start = {}
    for _ in range(6):  # interleaved growth scatters every sequence's pages over the pool
        _fill([st], [3, 5, 2, 4], rng, start)
        start = {s: st.length(s) for s in range(4)}
    st.release(1)
    frag = st.fragmentation()
    q = rng.standard_normal((3, H, HD)).astype(np.float32)
    sid, pos = np.array([0, 2, 3], np.int32), np.array([17, 11, 23], np.int32)
    before = [np.empty_like(q) for _ in range(L)]
    for layer in range(L):
        st.attend(layer, sid, pos, q, 0.125, before[layer])
    report = st.compact()
    st.check()
    after = st.fragmentation()
    assert frag["scatter"] > 0.5 and after["scatter"] == 0.0 and after["span"] == 1.0, (frag, after)
    assert report["pages_moved"] > 0
    for layer in range(L):
        out = np.empty_like(q)
        st.attend(layer, sid, pos, q, 0.125, out)
        np.testing.assert_array_equal(out, before[layer])


def test_errors_and_config(monkeypatch):
    st = _store()
    s = st.new_sequence()
    with pytest.raises(InputError, match="does not continue"):
        st.reserve(np.array([s], np.int32), np.array([3], np.int32))
    with pytest.raises(InputError, match="no KV sequence"):
        st.length(99)
    with pytest.raises(InputError, match="not in use"):
        st.reserve(np.array([1], np.int32), np.array([0], np.int32))
    with pytest.raises(InputError, match="roll"):
        st.truncate(s, 5)
    assert parse_bytes("256M") == 256 << 20 and parse_bytes("1.5GiB") == int(1.5 * (1 << 30))
    with pytest.raises(ConfigError):
        parse_bytes("lots")
    monkeypatch.setenv("CORERT_KV_BUDGET", "64M")
    monkeypatch.setenv("CORERT_KV_PAGE_TOKENS", "32")
    cfg = PagedConfig.from_env("f16")
    assert (cfg.budget_bytes, cfg.page_tokens, cfg.dtype) == (64 << 20, 32, "f16")
    monkeypatch.setenv("CORERT_KV_PAGE_TOKENS", "x")
    with pytest.raises(ConfigError):
        PagedConfig.from_env("q8")


def test_registered_for_the_native_engine_only():
    from corert.plugin_host import PluginHost, parse_selections

    host = PluginHost.build()
    res = host.resolve("kv_cache", parse_selections({"kv_cache": "paged"})["kv_cache"], engine="native")
    assert res.variant.name == "q8"
    provider = host.create(res, engine="native", model="x", config=None)
    store = provider.allocate(L, KV, HD, 64, 2)
    assert provider.stats()["stores"][0]["pages_total"] == store.n_pages
    with pytest.raises(PluginError):
        host.resolve("kv_cache", parse_selections({"kv_cache": "paged:q8"})["kv_cache"], engine="llama.cpp")
    with pytest.raises(PluginError):
        host.create(res, engine="llama.cpp")


def test_rotate_is_an_orthonormal_walsh_hadamard_transform():
    assert rotation_block(64) == 64 and rotation_block(96) == 32 and rotation_block(128) == 128
    h = np.array([[1.0]])
    while h.shape[0] < 64:
        h = np.block([[h, h], [h, -h]])
    x = np.random.default_rng(7).standard_normal((5, 3, 128)).astype(np.float32)
    y = x.copy()
    rotate(y, 64)  # two blocks of 64 per row
    want = (x.reshape(5, 3, 2, 64).astype(np.float64) @ (h / 8.0)).reshape(x.shape)
    np.testing.assert_allclose(y, want, atol=1e-5)
    rotate(y, 64)
    np.testing.assert_allclose(y, x, atol=1e-5)  # its own inverse


def _q8_error(calibrate: bool, sink_at_0: bool = True):
    """Mean |paged q8 - contiguous f32| of attention over keys shaped like Qwen2's (two loud channels with
    an offset, from K biases) after a position-0 key shared by every sequence (an attention sink)."""
    rng = np.random.default_rng(6)
    st = _store("q8")
    loud = np.ones(HD, np.float32)
    loud[[3, 40]] = 25.0
    sink = rng.standard_normal((L, KV, HD)).astype(np.float32) * 8.0

    def keys(layer, n, pos0):
        k = (rng.standard_normal((n, KV, HD)).astype(np.float32) + 2.0) * loud
        if pos0 and sink_at_0:
            k[0] = sink[layer]
        return k


    def run(store, n, ref=None):
        """A sequence of n rows written and attended layer by layer; the mean error against ``ref``."""
        s = store.new_sequence()
        sid, pos = np.full(n, s, np.int32), np.arange(n, dtype=np.int32)
        store.reserve(sid, pos, token_ids=pos.astype(np.int64))
        if ref is not None:
            ref.new_sequence()
            ref.reserve(sid * 0, pos)
        err = []
        for layer in range(L):
            k, v = keys(layer, n, True), rng.standard_normal((n, KV, HD)).astype(np.float32)
            q = rng.standard_normal((n, H, HD)).astype(np.float32)
            q[..., 3] *= 0.1  # queries that barely read the loudest key channel
            a = np.empty_like(q)
            store.write(layer, sid, pos, k, v), store.attend(layer, sid, pos, q, 0.125, a)
            if ref is not None:
                b = np.empty_like(q)
                ref.write(layer, sid * 0, pos, k, v), ref.attend(layer, sid * 0, pos, q, 0.125, b)
                err.append(np.abs(a - b).mean())
        return s, float(np.mean(err)) if err else None

    if calibrate:
        with st.calibrating():
            s, _ = run(st, 80)
            st.release(s)
        assert st.pool.cached_free == 0  # pages of the old basis left the prefix cache
    _, err = run(st, 60, ContiguousKVStore(L, KV, HD, 256, 4, "f32"))
    return err, st


def test_q8_calibration_weights_key_channels_and_stores_the_sink_exactly():
    rotated_only, st = _q8_error(calibrate=False)
    assert not st.coding.calibrated and (st.coding.w == 1).all()
    calibrated, st = _q8_error(calibrate=True)
    c = st.coding
    assert c.calibrated and (c.w[:, :, 3] < 0.2 * np.median(c.w)).all()  # loud, rarely read: squeezed
    assert np.abs(c.mu[:, :, 40] - 50.0).max() < 10.0  # the offset is taken out
    # position 0 equals the calibration's position 0: stored as all zeros, its key exact via the kernel's sink
    p0 = st.table[0, 0]
    assert not st.k[:, p0, :, 0].any()
    assert calibrated < 0.5 * rotated_only, (calibrated, rotated_only)
    # the reference key of position 0 is a help, never needed for correctness
    other_sink, _ = _q8_error(calibrate=True, sink_at_0=False)
    assert other_sink < 0.5 * rotated_only, (other_sink, rotated_only)
    with pytest.raises(InputError, match="release"):
        st2 = _store("q8")
        with st2.calibrating():
            st2.new_sequence()
            st2.reserve(np.zeros(1, np.int32), np.zeros(1, np.int32))


@pytest.mark.parametrize("kernel", list(ATTEND))
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_sliding_window_reads_only_its_last_positions(dtype, kernel):
    """gemma3's local layers: ``window`` w reads positions p - w + 1 .. p, page borders included; the
    contiguous reference against numpy, every paged kernel against the contiguous one."""
    rng = np.random.default_rng(13)
    st, ref = _store(dtype, kernel), ContiguousKVStore(L, KV, HD, 256, 4, "f32")
    for s in (st, ref):
        for _ in range(3):
            s.new_sequence()
    sid, pos, _ = _fill([st, ref], [40, 9, 23], rng)
    q = rng.standard_normal((len(sid), H, HD)).astype(np.float32)
    full = np.empty_like(q)
    ref.attend(1, sid, pos, q, 0.125, full)
    for window in (1, 9, 16, 17, 41):
        got, want = np.empty_like(q), np.empty_like(q)
        st.attend(1, sid, pos, q, 0.125, got, window=window)
        ref.attend(1, sid, pos, q, 0.125, want, window=window)
        assert np.abs(got - want).max() < TOL[dtype]
        exact = np.empty(q.shape)
        for i, (s, p) in enumerate(zip(sid, pos)):
            lo = max(0, p + 1 - window)
            for h in range(H):
                keys = ref.k[1, s, h // (H // KV), lo:p + 1].astype(np.float64)
                e = np.exp((keys @ q[i, h] - (keys @ q[i, h]).max()) * 0.125)
                exact[i, h] = (e / e.sum()) @ ref.v[1, s, h // (H // KV), lo:p + 1]
        np.testing.assert_allclose(want, exact, atol=1e-5)
        covered = pos < window  # the window holds the whole prefix: plain causal attention
        np.testing.assert_array_equal(want[covered], full[covered])
