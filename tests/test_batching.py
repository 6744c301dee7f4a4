"""Continuous batching and kv_cache=paged on a real model (SmolLM2-135M): isolation (interleaved streams
produce exactly the tokens they produce alone), prefix sharing with copy-on-write, eviction and
transparent recompute, compaction mid-run, and no page leaked after mixed add/cancel/finish operations."""
from __future__ import annotations

import numpy as np
import pytest

from corert import RuntimeConfig
from corert.cpu import info
from corert.tools.corpus import corpus_file
from corert.engines.native.batching import BatchRunner
from corert.engines.native.plugin import AMX_BF16, NativeEngine
from corert.errors import InputError
from corert.interfaces import SamplingParams, ThreadBudget
from corert.plugins.kv_cache.paged.config import PagedConfig
from corert.plugins.kv_cache.paged.plugin import PagedKV
from corert.plugins.kv_cache.paged.store import page_bytes
from corert.plugins.tokenizer.llama_cpp import LlamaCppTokenizer

BUDGET = ThreadBudget(cores=2, llama_threads=2, llama_batch_threads=2, ort_intra_op=1, ort_inter_op=1,
                      ort_spinning=False, numba_threads=2)
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three primary colors are", "Q: What is 12 times 12?\nA:"]
TEXT = corpus_file("license-apache2.txt").read_text(encoding="utf-8")
GREEDY = SamplingParams(max_tokens=8, temperature=0.0)


def _load(path, dtype="q8", n_seqs=4, budget=None, n_ctx=512, variant="avx2"):
    kv = PagedKV(PagedConfig(dtype=dtype, budget_bytes=budget))
    return NativeEngine(variant).load(path, tokenizer=LlamaCppTokenizer(path), kv_cache=kv, n_ctx=n_ctx,
                                     threads=BUDGET, config=RuntimeConfig(n_seqs=n_seqs))


@pytest.fixture(scope="module")
def model(smollm2):
    m = _load(smollm2)
    yield m
    m.close()


def _alone(model, ids, params=GREEDY):
    return BatchRunner(model, share_prefixes=False).run([ids], params)[0]


def test_interleaved_streams_produce_what_they_produce_alone(model):
    tok = model.tokenizer
    ids = [tok.encode(p) for p in PROMPTS]
    alone = [_alone(model, x) for x in ids]
    r = BatchRunner(model, share_prefixes=False)
    a, b = r.add(ids[0], GREEDY), r.add(ids[1], GREEDY)
    r.step(), r.step()
    c = r.add(ids[2], GREEDY)  # joins mid-flight
    r.step()
    d = r.add(ids[3], GREEDY)
    while r.active:
        r.step()
    assert [r.result(s).generated for s in (a, b, c, d)] == alone[:4]
    assert r.rows < sum(len(x) + GREEDY.max_tokens for x in ids[:4])  # really batched: fewer steps than rows
    assert r.steps < 4 * GREEDY.max_tokens
    # sampled streams too: a seeded sampler gives the same draws with or without company
    hot = SamplingParams(max_tokens=5, temperature=0.9, seed=7)
    together = BatchRunner(model, share_prefixes=False).run(ids[:2], hot)
    assert together == [_alone(model, x, hot) for x in ids[:2]]
    # the engine's session path (one sequence, whole prompt in one forward) agrees with the runner
    s = model.new_session()
    logits = s.eval(ids[4])
    out = []
    for _ in range(GREEDY.max_tokens):
        t = int(np.argmax(logits))
        out.append(t)
        logits = s.eval([t])
    s.close()
    assert out[:len(alone[4])] == alone[4]
    model.kv.check()
    assert model.kv.stats()["pages_used"] == 0


def test_shared_prefix_pages_and_copy_on_write(model):
    tok = model.tokenizer
    common = tok.encode(TEXT)[:70]  # 4 full pages and a bit
    x, y = common + tok.encode(" Paris"), common + tok.encode(" London")
    alone = [_alone(model, x), _alone(model, y)]
    kv = model.kv
    r = BatchRunner(model)
    sx = r.add(x, GREEDY)
    r.step()  # x's prompt is in: its full pages are now cached prefixes
    hits0 = kv.counters["prefix_hits"]
    sy = r.add(y, GREEDY)
    assert kv.counters["prefix_hits"] - hits0 == 64  # y took x's four full pages instead of recomputing
    assert kv.stats()["shared_pages"] == 4
    while r.active:
        r.step()
    assert [r.result(sx).generated, r.result(sy).generated] == alone
    # two sessions on the same cached prefix; one rolls back into a shared page (a rejected draft) and
    # writes: it gets its own copy of that page, the other keeps reading the original
    s1, s2 = model.new_session(), model.new_session()
    for s in (s1, s2):
        s.tokens = common[:kv.match_prefix(s.seq, common)]  # what a prefix-aware session does
        assert len(s.tokens) == 64
    assert kv.stats()["shared_pages"] >= 4
    s1.eval(common[64:])
    cow0 = kv.counters["cow_copies"]
    s2.truncate(40)
    l2 = s2.eval(common[40:] + tok.encode(" Paris"))
    assert kv.counters["cow_copies"] == cow0 + 1
    l1 = s1.eval(tok.encode(" Paris"))  # same ids as s2 now: s2's writes did not touch s1's pages
    np.testing.assert_array_equal(l1, l2)
    s1.close(), s2.close()
    kv.check()


def test_evicted_sequence_is_recomputed_transparently(smollm2, model):
    pb = page_bytes(PagedConfig("q8"), 30, 3, 64)
    m = _load(smollm2, n_seqs=2, budget=12 * pb)  # 12 pages of 16 tokens for two sequences
    try:
        tok = m.tokenizer
        # a fresh store (calibrated at load on a fixed text) and one that served the other tests agree
        first = tok.encode(PROMPTS[4])
        assert _alone(m, first) == _alone(model, first)
        ids = tok.encode(TEXT)
        a, b = m.new_session(), m.new_session()
        want = a.eval(ids[:100])  # 7 pages
        follow = a.eval(ids[100:101])
        a.truncate(100)
        b.eval(ids[200:300])  # 7 more pages: a (idle) is evicted
        assert m.kv.evicted(a.seq) and m.kv.stats()["evictions"] == 1
        got = a.eval(ids[100:101])  # recomputes a's 100 positions, then the new one
        np.testing.assert_array_equal(got, follow)
        assert m.kv.length(a.seq) == 101 and not m.kv.evicted(a.seq)
        assert m.kv.evicted(b.seq)  # now b was the idle one
        with pytest.raises(InputError, match="KV cache full"):
            a.eval(ids[101:300])  # 300 positions = 19 pages: cannot fit even alone
        assert len(a.tokens) == 101
        assert want.shape == (m.n_vocab,)
        a.close(), b.close()
        m.kv.check()
        assert m.kv.stats()["pages_used"] == 0
    finally:
        m.close()


def test_compaction_mid_run_keeps_outputs(model):
    tok = model.tokenizer
    ids = [tok.encode(p) for p in PROMPTS[:3]]
    params = SamplingParams(max_tokens=20, temperature=0.0)
    plain = BatchRunner(model, share_prefixes=False).run(ids, params)
    r = BatchRunner(model, share_prefixes=False)
    sids = [r.add(x, params) for x in ids]
    report = None
    while r.active:
        r.step()
        if r.steps == 12:
            report = model.kv.compact()
    assert [r.result(s).generated for s in sids] == plain
    assert report["before"]["scatter"] > 0 and report["after"]["scatter"] == 0.0


def test_no_page_leaked_after_mixed_add_cancel_finish(model):
    rng = np.random.default_rng(0)
    tok = model.tokenizer
    ids = [tok.encode(p) for p in PROMPTS]
    r = BatchRunner(model)
    added = cancelled = 0
    for _ in range(30):
        op = rng.integers(3)
        if op == 0 and len(r.streams) < model.kv.n_seqs:
            r.add(ids[rng.integers(len(ids))], SamplingParams(max_tokens=int(rng.integers(1, 5)),
                                                              temperature=0.0))
            added += 1
        elif op == 1 and r.streams:
            r.cancel(int(rng.choice(list(r.streams))))
            cancelled += 1
        elif r.active:
            r.step()
        model.kv.check()
    while r.active:
        r.step()
    assert added >= 5 and cancelled >= 2
    stats = model.kv.stats()
    assert stats["pages_used"] == 0 and stats["sequences"] == 0, stats


#: the tests of amx-bf16's two paths (a prompt's rows but its last on bf16 tiles)
needs_bulk_path = pytest.mark.skipif(not AMX_BF16.supported(info()), reason="this CPU lacks AMX-BF16 (no bulk path)")


@needs_bulk_path
def test_bulk_rows_come_first_in_a_step(smollm2, monkeypatch):
    """amx-bf16 (a prompt's rows but its last on bf16 tiles): a prompt's chunks joining decoding streams are
    put first in the step, so its bulk rows are a prefix of the forward (model.bind_product's two halves, no
    rows copied); every stream still produces exactly what it produces alone."""
    from corert.engines.native.model import Transformer

    masks = []
    forward = Transformer.forward

    def recording(self, ids, seq_ids, positions, kv, logit_rows, tree=None, bulk=None):
        masks.append(None if bulk is None else bulk.copy())
        return forward(self, ids, seq_ids, positions, kv, logit_rows, tree, bulk)

    m = _load(smollm2, variant="amx-bf16")
    try:
        tok = m.tokenizer
        ids = [tok.encode(PROMPTS[0]), tok.encode(PROMPTS[1]), tok.encode(TEXT)[:40]]
        alone = [_alone(m, x) for x in ids]
        monkeypatch.setattr(Transformer, "forward", recording)
        r = BatchRunner(m, prefill_rows=16, share_prefixes=False)  # the third prompt: 16, 16 and 8 rows
        a, b = r.add(ids[0], GREEDY), r.add(ids[1], GREEDY)
        r.step(), r.step()
        joined = len(masks)
        c = r.add(ids[2], GREEDY)  # after a and b in the plan: its rows were last before
        while r.active:
            r.step()
        assert [r.result(s).generated for s in (a, b, c)] == alone
        # its three chunks beside a's and b's decode rows: bulk first, then exact (the last chunk's last row)
        mixed = [x for x in masks[joined:] if x is not None and x.any()]
        assert len(mixed) == 3 and all(x.size > x.sum() for x in mixed)
        assert all(x[:x.sum()].all() for x in mixed)
        assert masks[0] is not None and masks[0].sum() == len(ids[0]) + len(ids[1]) - 2  # a's and b's prompts
    finally:
        m.close()


@needs_bulk_path
def test_a_follow_up_prompt_shares_only_bulk_pages(smollm2):
    """amx-bf16: a follow-up turn (the first prompt, its answer, a new question) takes the cached pages of the
    first prompt's bulk rows, not those holding its answer (exact rows: a forward of the follow-up alone puts
    them on the bulk path), and produces exactly what it produces alone."""
    m = _load(smollm2, variant="amx-bf16")
    try:
        tok = m.tokenizer
        first = tok.encode(TEXT)[:50]
        params = SamplingParams(max_tokens=40, temperature=0.0)
        r = BatchRunner(m)
        answer = r.run([first], params)[0]
        assert len(answer) > 30  # the answer fills pages of its own
        follow = first + answer + tok.encode(" In short,")
        hits0 = m.kv.counters["prefix_hits"]
        shared = r.run([follow], GREEDY)[0]
        assert m.kv.counters["prefix_hits"] - hits0 == 48  # the first prompt's full pages of bulk rows: (50 - 1) // 16
        assert shared == _alone(m, follow)  # alone last: its own full pages become prefix-cache entries
    finally:
        m.close()
