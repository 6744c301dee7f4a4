"""Speculation inside continuous batching on the native engine (SmolLM2-135M): every stream's greedy tokens
equal its solo plain run with 1, 3 and 8 streams, on contiguous and paged:q8 stores; a rollback leaves the
stream's K/V, page tokens and prefix hashes exactly as if only the accepted tokens had been evaluated; the
Runtime batches speculative requests."""
from __future__ import annotations

import numpy as np
import pytest

from corert import Runtime, RuntimeConfig
from corert.engines.native.batching import BatchRunner
from corert.engines.native.plugin import NativeEngine
from corert.interfaces import SamplingParams, ThreadBudget
from corert.plugins.kv_cache.contiguous import ContiguousKV
from corert.plugins.kv_cache.paged.config import PagedConfig
from corert.plugins.kv_cache.paged.plugin import PagedKV
from corert.plugins.speculative.step_cost import PRIOR_ROW_SHARE, StepCost
from corert.plugins.speculative.speculative import make
from corert.plugins.tokenizer.llama_cpp import LlamaCppTokenizer

from concurrent_requests import hold_first_step_until_joined, run_concurrently

BUDGET = ThreadBudget(cores=2, llama_threads=2, llama_batch_threads=2, ort_intra_op=1, ort_inter_op=1,
                      ort_spinning=False, numba_threads=2)
_FOX = "the quick brown fox jumps over the lazy dog, the quick brown fox jumps over the lazy dog."
_CODE = "def area(w, h):\n    return w * h\n\ndef perimeter(w, h):\n    return 2 * (w + h)\n"
# chat-formatted copy tasks: SmolLM2 copies much of them, so lookup drafts get accepted (and rejected)
PROMPTS = [f"<|im_start|>user\n{task}<|im_end|>\n<|im_start|>assistant\n" for task in (
    f"Repeat exactly: {_FOX}",
    f"Return this code unchanged:\n{_CODE}",
    "Repeat exactly: one, two, three, four, five, six, seven, eight, nine, ten.",
    f"Rewrite in capitals: {_FOX}",
    f"Add a comment to this code:\n{_CODE}",
    "Repeat exactly: red, green, blue, red, green, blue, red, green, blue.",
    "Copy this list: apples, pears, plums, cherries, grapes, lemons, limes.",
    f"Repeat twice: {_FOX}",
)]
GREEDY = SamplingParams(max_tokens=16, temperature=0.0)
STORES = {"contiguous": lambda: ContiguousKV(), "paged:q8": lambda: PagedKV(PagedConfig(dtype="q8"))}


@pytest.fixture(scope="module", params=list(STORES))
def loaded(request, smollm2):
    m = NativeEngine("avx2").load(smollm2, tokenizer=LlamaCppTokenizer(smollm2), kv_cache=STORES[request.param](),
                                  n_ctx=256, threads=BUDGET, config=RuntimeConfig(n_seqs=8))
    ids = [m.tokenizer.encode(p, parse_special=True) for p in PROMPTS]
    solo = [BatchRunner(m, share_prefixes=False).run([x], GREEDY)[0] for x in ids]
    yield m, ids, solo
    m.close()


@pytest.mark.parametrize("n", [1, 3, 8])
def test_batched_speculation_equals_solo_plain(loaded, n):
    model, ids, solo = loaded
    # fixed depth drafts whenever it can; adaptive chooses (once, with a full batch: it decides per row cost)
    for variant in ("lookup", "adaptive") if n == 8 else ("lookup",):
        spec = make(variant).batch_speculation
        r = BatchRunner(model)
        sids = [r.add(x, GREEDY, speculation=spec) for x in ids[:n]]
        while r.active:
            r.step()
        assert [r.result(s).generated for s in sids] == solo[:n], variant
        if variant == "lookup":
            assert 0 < r.accepted < r.drafted  # drafts were verified, some kept and some rolled back
            assert r.steps < GREEDY.max_tokens + 1  # accepted drafts saved steps
    assert model.kv.nbytes() > 0 and all(model.kv.length(s) == 0 for s in range(model.kv.n_seqs))


def _kv_rows(kv, seq: int, n: int) -> list[np.ndarray]:
    """The stored K/V of positions 0..n-1 of ``seq`` (and q8 scales), layout aside."""
    if not hasattr(kv, "seqs"):  # contiguous: (layer, seq, kv_head, position, head_dim)
        return [kv.k[:, seq, :, :n], kv.v[:, seq, :, :n]]
    P, pages = kv.page_tokens, kv.seqs[seq].pages
    at = [(pages[p // P], p % P) for p in range(n)]
    arrays = [kv.k, kv.v] + ([kv.ks, kv.vs] if kv.ks is not None else [])
    return [np.stack([a[:, page, :, slot] for page, slot in at]) for a in arrays]


def test_rollback_leaves_the_kv_as_if_only_accepted_tokens_were_written(loaded):
    model, ids, _ = loaded
    kv = model.kv
    r = BatchRunner(model, share_prefixes=False)
    sids = [r.add(x, GREEDY, speculation=make("lookup").batch_speculation) for x in ids[:3]]
    for _ in range(4):  # mid-flight: drafts verified and partly rolled back, nobody finished yet
        r.step()
    assert r.drafted > r.accepted > 0 and all(s in r.streams for s in sids)
    for sid in sids:
        st = r.streams[sid]
        assert kv.length(st.seq) == st.done_upto == len(st.tokens) - 1  # only the pending token lacks K/V
        ref = model.new_session()  # the same tokens, evaluated plainly: prompt, then one token at a time
        ref.eval(st.tokens[:st.n_prompt])
        for t in st.tokens[st.n_prompt:st.done_upto]:
            ref.eval([t])
        for got, want in zip(_kv_rows(kv, st.seq, st.done_upto), _kv_rows(kv, ref.seq, st.done_upto)):
            np.testing.assert_array_equal(got, want)
        if hasattr(kv, "seqs"):  # page tokens and prefix-cache hashes: those of the accepted tokens only
            assert kv.seqs[st.seq].tokens == kv.seqs[ref.seq].tokens == st.tokens[:st.done_upto]
            assert kv.seqs[st.seq].hashes == kv.seqs[ref.seq].hashes
        ref.close()
    for sid in sids:
        r.cancel(sid)
    if hasattr(kv, "check"):
        kv.check()
        assert kv.stats()["pages_used"] == 0


@pytest.mark.slow
def test_runtime_batches_speculative_requests(smollm2, monkeypatch):
    """speculative:lookup with n_seqs > 1 on the native engine: concurrent requests join one batch and get
    their solo plain text; logit processors are still refused."""
    common = dict(model=smollm2, engine="native", n_ctx=256, plugins={"tokenizer": "llama_cpp", "kv_cache": "paged:q8"})
    plain = Runtime(**common)
    expected = [plain.generate(p, max_tokens=16, temperature=0).token_ids for p in PROMPTS[:3]]
    plain.close()
    rt = Runtime(**{**common, "plugins": {**common["plugins"], "speculative": "speculative:lookup"}}, n_seqs=4)
    try:
        service = rt.load_generation_model()[0].batch_service()
        hold_first_step_until_joined(monkeypatch, service, 3)
        got, errors = run_concurrently(lambda p: rt.generate(p, max_tokens=16, temperature=0), PROMPTS[:3])
        assert errors == [None] * 3
        assert [c.token_ids for c in got] == expected
        assert all(c.decoder_stats["continuous_batching"] for c in got) and service.peak_streams == 3
        assert service.runner.accepted > 0
        with pytest.raises(Exception, match="logit_bias"):
            rt.generate(PROMPTS[0], max_tokens=4, logit_bias={1: 1.0})
    finally:
        rt.close()


# -- the batch's step cost and the depth it buys (pure: no model) ----------------------------------------
def test_step_cost_is_the_line_through_the_batchs_step_times():
    cost = StepCost()
    cost.record(8, 0.030)  # one size: the prior prices a further row at a share of an average one
    assert cost.fit().per_row == pytest.approx(PRIOR_ROW_SHARE * 0.030 / 8)
    for rows in (8, 16, 24, 40):
        for _ in range(3):
            cost.record(rows, 0.010 + 0.0025 * rows)
    assert (cost.fit().fixed, cost.fit().per_row, cost.fit().per_row_above) == pytest.approx((0.010, 0.0025, 0.0))
    assert cost(64) == pytest.approx(0.010 + 0.0025 * 64)  # past the largest size seen: the same line, not free
    assert [(m["rows"], m["steps"]) for m in cost.table()] == [(8, 4), (16, 3), (24, 3), (40, 3)]


def test_step_cost_finds_the_knee_where_rows_stop_riding_on_the_weight_reads():
    """Steps timed as the int8 kernels behave (memory-bound up to ~5 rows, then a full row's compute per row,
    with noise): the convex fit prices both a lone stream's drafts and a full batch's extra rows near the
    truth, where one straight line gets the small steps far too cheap (and so their drafts too dear)."""
    truth = lambda rows: 0.004 + max(0.031, 0.007 * rows)  # noqa: E731
    rng = np.random.default_rng(0)
    cost = StepCost()
    for rows in [1] * 20 + [2, 3, 4, 6] * 3 + [8] * 60 + [12, 16, 20, 24, 32, 40] * 4:
        cost.record(rows, truth(rows) * rng.uniform(0.95, 1.05))
    fit = cost.fit()
    assert 4 <= fit.knee <= 8 and fit.per_row + fit.per_row_above == pytest.approx(0.007, rel=0.1)
    for rows in (1, 2, 8, 16, 40, 64):
        assert cost(rows) == pytest.approx(truth(rows), rel=0.08), rows
    assert cost(16) - cost(1) == pytest.approx(truth(16) - truth(1), rel=0.1)  # a lone stream's 15 drafts
    line = np.polyfit(*zip(*cost.steps), 1)
    assert np.polyval(line, 1) < 0.7 * truth(1)  # the straight line: a lone stream's step far too cheap


@pytest.mark.parametrize("per_row, drafts", [(0.0005, True), (0.003, False)])
def test_batch_depth_follows_the_marginal_cost_of_a_row(per_row, drafts):
    """Eight streams in the middle of a 20-token copy of their prompt: they draft when a row costs a fraction
    of an average row of the 8-row step, and not when a row costs as much as an average one (a draft row
    then yields no more than it costs, whatever its acceptance)."""
    spec = make("adaptive").batch_speculation
    for rows in (8, 16):
        spec.record_step(rows, 0.020 + per_row * rows if drafts else per_row * rows)
    params = SamplingParams(max_tokens=64, temperature=0.0)
    rng = np.random.default_rng(0)
    prompt = list(range(100, 140))
    entries = [(spec.stream(prompt, params, rng), prompt + prompt[:20], 31) for _ in range(8)]
    depths = [len(d) for d in spec.draft(entries, 8, 8)]
    assert all(k > 0 for k in depths) if drafts else depths == [0] * 8, depths


def test_a_prompt_chunk_in_the_step_does_not_buy_drafts():
    """Eight decode streams whose copy class breaks early half the time decline to draft beside each other
    (a row costs a full row's compute), and still decline when a 256-row prompt chunk shares the step: the
    chunk makes the step slow, not its tokens cheap.  Alone, a stream takes the same offer."""
    spec = make("adaptive").batch_speculation
    for rows in [1] * 10 + [2, 4, 8, 12, 16, 24, 40] * 5:
        spec.record_step(rows, 0.004 + max(0.031, 0.007 * rows))
    params = SamplingParams(max_tokens=64, temperature=0.0)
    prompt = list(range(100, 140))

    def depths(n: int, prompt_rows: int) -> list[int]:
        entries = [(spec.stream(prompt, params, np.random.default_rng(0)), prompt + prompt[:20], 31)
                   for _ in range(n)]
        return [len(d) for d in spec.draft(entries, n + prompt_rows, n)]

    spec.ctrl.classes[3].runs.extend([0, 1, 0, 20, 0, 2])  # the 20-token match's class: bimodal runs
    assert depths(8, 0) == [0] * 8
    assert depths(8, 256) == [0] * 8
    assert depths(1, 0)[0] > 0


#: a quiet 8-stream run's step times (Qwen2.5 0.5B paged:q8, rows: seconds, steps): its knee fit prices rows
#: 9-11 at 4.5 ms, below the 6.8 ms of an average row, yet its fitted ceiling at 8 rows is 0.84
QUIET_STEPS = [(1, 0.0223, 27), (3, 0.0349, 11), (4, 0.0236, 1), (5, 0.0441, 1), (7, 0.0544, 1), (8, 0.0557, 6),
               (9, 0.0581, 7), (10, 0.0639, 11), (11, 0.0684, 21), (12, 0.0759, 40), (13, 0.0913, 1), (14, 0.0939, 1)]


def test_a_full_batch_below_its_ceiling_drafts_nothing():
    """Eight streams in a copy that is always accepted: the per-draft rule alone would take a few draft rows
    (the knee's cheap rows), but not even every draft accepted beats the plain step at the fitted ceiling,
    so none drafts; at three streams the ceiling is above 1 and they do."""
    spec = make("adaptive").batch_speculation
    for rows, seconds, steps in QUIET_STEPS:
        for _ in range(steps):
            spec.record_step(rows, seconds)
    spec.ctrl.classes[3].runs.extend([20] * 6)
    params = SamplingParams(max_tokens=64, temperature=0.0)
    prompt = list(range(100, 140))

    def entries(n: int):
        return [(spec.stream(prompt, params, np.random.default_rng(0)), prompt + prompt[:20], 31) for _ in range(n)]

    fit = spec.cost.fit()
    assert fit.ceiling(8) < 1.0 < fit.ceiling(3)
    eight = entries(8)
    for d, tokens, room in eight:
        d.sync(tokens, room)
    assert spec._depth(eight[0][0], 8, 0, 8.0) > 0  # what the per-draft rule would take
    assert [len(d) for d in spec.draft(eight, 8, 8)] == [0] * 8
    assert all(d.shadows for d, _, _ in eight)  # declined offers still teach their class
    assert any(len(d) for d in spec.draft(entries(3), 3, 3))


def test_a_fully_accepted_draft_is_followed_to_the_end_of_its_run():
    """A stream drafting 3 of a 31-token copy offer, all accepted, then copying 7 more tokens: the controller
    learns a run of 10, not a run of 3 censored at the depth drafted (the solo decoder's rule)."""
    spec = make("adaptive").batch_speculation
    prompt = list(range(100, 140))
    tokens = prompt + prompt[:20]
    d = spec.stream(prompt, SamplingParams(max_tokens=64, temperature=0.0), np.random.default_rng(0))
    d.sync(tokens, 31)
    offer = list(d.source.free_offer())
    drafts = d.take(3)
    rows = np.zeros((4, 200), np.float32)
    rows[np.arange(4), offer[:4]] = 1.0  # the target agrees with every draft, then with the offer's 4th token
    runs = spec.ctrl.classes[d.cls].runs
    before = list(runs)
    assert d.settle(rows) == (3, offer[3]) and list(runs) == before  # censored: nothing recorded yet
    d.sync(tokens + drafts + offer[3:10] + [7], 31)  # 7 more copied tokens, then an edit
    assert list(runs) == before + [10]
    d.sync(tokens + drafts + offer[3:10] + [7], 31)
    d.finish()  # nothing left to settle
    assert list(runs) == before + [10]
