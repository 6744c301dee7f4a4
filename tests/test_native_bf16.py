"""The AMX-BF16 tile products (matmul_bf16.py) against float64 products of the same dequantized weights, for
every layout and several row counts (tails, pairs of row tiles, K cut into chunks), and each row's output
independent of the other rows of the call (what a prompt-row routing needs: a row's bits never depend on how
a prompt is chunked or batched)."""
from __future__ import annotations

import numpy as np
import pytest

from corert.cpu import info
from corert.engines.native import matmul_bf16, matmul_i8, products
from corert.engines.native.plugin import AMX
from native_support import random_blocks

pytestmark = pytest.mark.skipif(not (AMX.supported(info()) and "amx_bf16" in info().features),
                                reason="this CPU lacks AMX-BF16")

ROWS = [1, 17, 64, 300]


def _f16(bits):
    return bits.view(np.float16).astype(np.float64)


def _per(a, width):
    """(rows, blocks) -> (rows, blocks * width): each block's value over its columns."""
    return np.repeat(a.astype(np.float64), width, axis=1)


def _nibbles(nib):
    """GGUF Q4 packing (rows, cols / 2) -> values (rows, cols): a block's low nibbles are its columns 0-15, the
    high ones 16-31."""
    blocks = nib.reshape(nib.shape[0], -1, 16)
    return np.concatenate([blocks & 15, blocks >> 4], axis=2).reshape(nib.shape[0], -1).astype(np.float64)


@pytest.fixture(scope="module")
def layouts():
    """Random matrices of 40 rows (the last group padded: an odd panel) x 2048 columns in every layout, with
    their float64 weights."""
    rng = np.random.default_rng(14)
    rows, cols = 40, 2048
    r = random_blocks(rng, rows, cols)
    q, bits, sub, sup, nib, scale, offset = (r[k] for k in ("q", "bits", "sub", "sup", "nib", "scale", "offset"))
    sc, mn, dd, dmin = r["sc"], r["mn"], r["dd"], r["dmin"]
    q6 = _per(sub, 16) * _per(sup, 256)
    q4k_scale = (sc * _per(_f16(dd), 8)).astype(np.float32)  # the kernels' f32 products (exact: 6 x 11 bits)
    q4k_offset = -(mn * _per(_f16(dmin), 8)).astype(np.float32)
    mats = {"q8": (matmul_i8.layout_q8(q, bits, pack=False), q * _per(_f16(bits), 32)),
            "q5": (matmul_i8.layout_q8(q // 8, bits), (q // 8) * _per(_f16(bits), 32)),
            "q6": (matmul_i8.layout_q6(q, sub, sup), q * q6),
            "q6p": (matmul_i8.layout_q6(q // 4, sub, sup), (q // 4) * q6),
            "q4": (matmul_i8.layout_q4(nib, scale, offset), _nibbles(nib) * _per(scale, 32) + _per(offset, 32)),
            "q4k": (matmul_i8.layout_q4k(nib, sc, mn, dd, dmin),
                    _nibbles(nib) * _per(q4k_scale, 32) + _per(q4k_offset, 32))}
    assert matmul_i8.is_packed_q5(mats["q5"][0][0], cols) and matmul_i8.is_packed_q6(mats["q6p"][0][0], cols)
    assert not matmul_i8.is_packed_q6(mats["q6"][0][0], cols)
    # each the layout its name says, as the products' binding tells them apart
    assert {k: products.layout_of("q8" if k == "q5" else k[:2], v[0], cols) for k, v in mats.items()} == \
        {k: k for k in mats}
    return mats, rng, cols


def _product(kind, parts, x, rows, split, threads=2):
    """The layout's bf16 product as the products' binding calls it: (*pre, x, out, *post, threads, split)."""
    k = products.LAYOUT_KERNELS[kind]
    pre, _, post = k.arguments(parts)
    out = np.full((x.shape[0], rows), np.nan, np.float32)
    k.bf16(*pre, x, out, *post, threads, split)
    return out


def _bound(x, w, split):
    """The largest error allowed per output: each operand rounded to bf16 is off by at most 2^-9 of itself;
    split in hi + lo, by 2^-9 of the remainder, itself at most 2^-9 of the value, and the dropped lo * lo term
    by as much: 2 * 2^-9 (one term) or 3 * 2^-18 (three) of sum |x| |w|; the f32 sums over K add at most
    K * 2^-24 of it (the bf16 products are exact in f32)."""
    rounding = 3 * 2.0 ** -18 if split else 2 * 2.0 ** -9 + 2.0 ** -18
    return (rounding + x.shape[1] * 2.0 ** -24) * (np.abs(x.astype(np.float64)) @ np.abs(w).T)


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("kind", list(products.LAYOUT_KERNELS))
def test_bf16_against_float64(kind, split, layouts):
    mats, rng, cols = layouts
    parts, w = mats[kind]
    for n in ROWS:
        x = rng.standard_normal((n, cols)).astype(np.float32)
        got = _product(kind, parts, x, w.shape[0], split)
        ref = x.astype(np.float64) @ w.T
        err = np.abs(got - ref)
        bound = _bound(x, w, split)
        assert np.all(err <= bound), f"{kind} {n} rows: error {err.max():.3g}, worst ratio {(err / bound).max():.3g}"
        # and not loose by orders of magnitude: the typical error is within 100x of the bound's scale
        assert err.max() > 1e-4 * bound.max(), f"{kind}: the error is implausibly small (the bound is wrong)"


@pytest.mark.parametrize("kind", ["q4", "q8", "q6p"])
def test_bf16_row_independent_of_the_call(kind, layouts):
    """300 rows (K cut into 3 chunks: the C tiles go through ``out`` between them) give each row the bits it
    gets alone or among 17, on one thread or two."""
    mats, rng, cols = layouts
    parts, w = mats[kind]
    x = rng.standard_normal((300, cols)).astype(np.float32)
    assert -(-cols // 32 * 304 * 128 // matmul_bf16.A_CHUNK_BYTES) > 1  # several K chunks at 300 rows
    whole = _product(kind, parts, x, w.shape[0], True)
    for r0, r1, threads in ((0, 1, 1), (5, 22, 2), (299, 300, 2), (100, 164, 1)):
        part = _product(kind, parts, x[r0:r1], w.shape[0], True, threads)
        np.testing.assert_array_equal(part.view(np.uint32), whole[r0:r1].view(np.uint32),
                                      err_msg=f"rows {r0}..{r1}")


def _chunked_logits(t, ids: np.ndarray, cuts: list[int], bulk_last: bool = False) -> np.ndarray:
    """The last row's logits of one prompt fed in chunks ending at ``cuts`` (a session's prompt blocks: no
    logits before the last), on a fresh contiguous KV cache; with ``bulk_last`` the last row takes the bulk
    path too."""
    from corert.numba_setup import PARALLEL_LOCK, run_parallel
    from corert.plugins.kv_cache.contiguous import ContiguousKV

    cfg = t.cfg
    kv = ContiguousKV().allocate(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, -(-ids.size // 16) * 16, 1)
    seq = kv.new_sequence()
    start = 0
    for end in cuts:
        positions = np.arange(start, end, dtype=np.int32)
        seq_ids = np.full(end - start, seq, np.int32)
        last = end == ids.size
        rows = np.array([end - start - 1] if last else [], np.int64)
        bulk = np.ones(end - start, np.bool_) if bulk_last and last else None
        with PARALLEL_LOCK:
            kv.reserve(seq_ids, positions)
            out = run_parallel(t.forward, ids[start:end], seq_ids, positions, kv, rows, None, bulk, threads=2)
        start = end
    return out[0]


def test_prompt_rows_take_bf16_whatever_the_chunks(qwen05):
    """amx-bf16 on Qwen 0.5B: a prompt's rows but its last (bulk) on bf16 tiles, so the last row's logits are
    the same bits however the prompt is cut into forwards (2 to 3 chunks, 1-row ones included); a forward that
    returns every row's logits has no bulk rows and equals amx bit for bit; the bulk path's logits stay
    within bf16-split rounding of amx's (same top-1, close values)."""
    from corert.engines.native.model import Transformer
    from corert.models.gguf_header import read_header
    from corert.plugins.tokenizer.bpe import BpeTokenizer
    from native_support import prompt_logits

    header = read_header(qwen05, want_arrays=False)
    ids = np.array(BpeTokenizer.from_gguf(qwen05).encode(
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number, iteratively.\"\"\"\n    a, b = 0, 1\n"
        "    for _ in range(n):\n        a, b = b, a + b\n    return a\n"), np.int32)
    n = ids.size
    bf16, amx = Transformer.load(header, "amx-bf16", "auto"), Transformer.load(header, "amx", "auto")
    whole = _chunked_logits(bf16, ids, [n])
    for cuts in ([1, n], [17, 18, n], [n - 1, n]):
        np.testing.assert_array_equal(_chunked_logits(bf16, ids, cuts).view(np.uint32), whole.view(np.uint32),
                                      err_msg=str(cuts))
    exact = prompt_logits(amx, ids, threads=2)
    np.testing.assert_array_equal(prompt_logits(bf16, ids, threads=2).view(np.uint32), exact.view(np.uint32))
    assert not np.array_equal(whole, exact[-1])  # the bulk rows did take another path
    assert whole.argmax() == exact[-1].argmax()
    assert np.abs(whole - exact[-1]).max() < 1e-2 * np.abs(exact[-1]).max()
    all_bulk = _chunked_logits(bf16, ids, [n], bulk_last=True)
    assert all_bulk.argmax() == exact[-1].argmax() and not np.array_equal(all_bulk, whole)


def test_bind_product_runs_each_row_on_its_path(qwen05):
    """A product with a mixed ``bulk`` mask: bulk rows get the bits of an all-bulk call, the others those of
    an all-exact call (model.bind_product splits the rows; each path's rows are independent of the call)."""
    from corert.engines.native.model import Transformer, bind_product
    from corert.models.gguf_header import read_header

    t = Transformer.load(read_header(qwen05, want_arrays=False), "amx-bf16", "auto")
    rng = np.random.default_rng(3)
    for w, role in ((t.layers[0].wqkv, "qkv"), (t.layers[0].wdown, "down"), (t.layers[0].wgate_up, "gate_up")):
        run = bind_product(t._products, w, role)
        x = rng.standard_normal((37, w.cols)).astype(np.float32)
        mask = rng.random(37) < 0.6
        mixed = run(x, mask)
        np.testing.assert_array_equal(mixed[mask].view(np.uint32), run(x, np.ones(37, np.bool_))[mask].view(np.uint32))
        np.testing.assert_array_equal(mixed[~mask].view(np.uint32), run(x)[~mask].view(np.uint32))
