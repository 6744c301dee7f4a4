"""Speculative decoding: acceptance rules, losslessness on a real model's distributions, KV rollback,
the adaptive controller, and end-to-end generation."""
from __future__ import annotations


import numpy as np
import pytest

from corert import Runtime
from corert.tools.ab import chi2_critical as ab_chi2_critical
from corert.interfaces import SamplingParams
from corert.plugins.speculative.acceptance import accept_greedy, accept_sampled, sparse_probs
from corert.plugins.speculative.controller import (RESUMED, SHADOW_SPAN, Chooser, DepthController, ShadowOffer,
                                                  VerifyCost)
from corert.plugins.speculative.lookup import PromptLookup
from corert.plugins.speculative.sources import DraftModelSource, LookupSource

FULL = SamplingParams(temperature=1.0, top_k=0, top_p=1.0)


def chi2_critical(df: int) -> float:
    return ab_chi2_critical(df, 3.09)  # p = 0.001


def chi2_stat(counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0) -> tuple[float, int]:
    n = counts.sum()
    order = np.argsort(-probs)
    exp, obs = n * probs[order], counts[order]
    keep = exp >= min_expected
    e = np.append(exp[keep], exp[~keep].sum())  # pool the rare tail into one bin
    o = np.append(obs[keep], obs[~keep].sum())
    if e[-1] < min_expected:
        e, o = e[:-1], o[:-1]
    return float(((o - e) ** 2 / e).sum()), len(e) - 1


# -- greedy ----------------------------------------------------------------------------------------------
def _rows(best: list[int], vocab: int = 10) -> np.ndarray:
    rows = np.zeros((len(best), vocab), dtype=np.float32)
    rows[np.arange(len(best)), best] = 5.0
    return rows


def test_greedy_accepts_the_matching_prefix_and_adds_the_targets_token():
    assert accept_greedy([3, 4, 5], _rows([3, 4, 9, 1])) == (2, 9)
    assert accept_greedy([3, 4, 5], _rows([3, 4, 5, 7])) == (3, 7)  # all accepted: bonus token
    assert accept_greedy([3], _rows([2, 8])) == (0, 2)
    assert accept_greedy([], _rows([6])) == (0, 6)


# -- sampling: lossless --------------------------------------------------------------------------------
def _sample_outputs(p_logits: np.ndarray, q_logits: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Run the one-token draft/verify rule n times; return counts of the first emitted token."""
    rng = np.random.default_rng(seed)
    q = sparse_probs(q_logits, FULL)
    toks = np.fromiter(q.keys(), dtype=np.int64)
    w = np.fromiter(q.values(), dtype=np.float64)
    w /= w.sum()
    rows = np.stack([p_logits, p_logits])  # bonus row unused for the first token
    counts = np.zeros(p_logits.shape[0], dtype=np.int64)
    for x in toks[rng.choice(len(toks), size=n, p=w)]:
        n_ok, nxt = accept_sampled([int(x)], [q], rows, FULL, rng)
        counts[int(x) if n_ok == 1 else nxt] += 1
    return counts


def test_sampled_acceptance_reproduces_the_target_distribution_on_hand_made_logits():
    p_logits = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))
    q_logits = np.log(np.array([0.1, 0.1, 0.3, 0.3, 0.2]))  # a poor draft
    counts = _sample_outputs(p_logits, q_logits, 20_000)
    stat, df = chi2_stat(counts, np.exp(p_logits))
    assert stat < chi2_critical(df), (stat, df, counts)


def test_rejection_draws_from_the_residual():
    """A draft that always proposes token 0 where the target never would: every output comes from p."""
    rng = np.random.default_rng(1)
    p = np.log(np.array([1e-9, 0.5, 0.5]))
    n_ok, nxt = accept_sampled([0], [{0: 1.0}], np.stack([p, p]), FULL, rng)
    assert n_ok == 0 and nxt in (1, 2)


@pytest.mark.slow
def test_sampled_speculation_is_lossless_on_a_real_model(smollm2):
    """The target's next-token distribution at a fixed prefix (real smollm2 logits) against a draft
    distribution from another real prefix: 20k draws through the acceptance rule match the target's
    distribution (chi-square, p=0.001)."""
    rt = Runtime(engine="llama.cpp", model=smollm2, plugins={"tokenizer": "llama_cpp"})
    loaded, lock = rt.load_generation_model()
    tok = loaded.tokenizer
    with lock:
        s = loaded.session()
        s.truncate(0)
        p_logits = s.eval(tok.encode("My favourite colour is")).copy()
        s.truncate(0)
        q_logits = s.eval(tok.encode("The weather today is")).copy()
    params = SamplingParams(temperature=1.0, top_k=20, top_p=1.0)
    p = sparse_probs(p_logits, params)
    q = sparse_probs(q_logits, params)
    rng = np.random.default_rng(7)
    qt = np.fromiter(q.keys(), dtype=np.int64)
    qw = np.fromiter(q.values(), dtype=np.float64)
    counts: dict[int, int] = {}
    rows = np.stack([p_logits, p_logits])
    for x in qt[rng.choice(len(qt), size=20_000, p=qw / qw.sum())]:
        n_ok, nxt = accept_sampled([int(x)], [q], rows, params, rng)
        out = int(x) if n_ok else nxt
        counts[out] = counts.get(out, 0) + 1
    assert set(counts) <= set(p)  # never a token the target would not sample
    ids = sorted(p)
    stat, df = chi2_stat(np.array([counts.get(i, 0) for i in ids]), np.array([p[i] for i in ids]))
    assert stat < chi2_critical(df), (stat, df)
    rt.close()


# -- prompt lookup ---------------------------------------------------------------------------------------
def test_prompt_lookup_proposes_the_continuation_of_the_latest_match():
    look = PromptLookup(max_ngram=3)
    look.extend([1, 2, 3, 4, 5, 9, 1, 2, 3])
    assert look.propose(2) == [4, 5]
    look.extend([7])
    assert look.propose(3) == []  # (2, 3, 7) / (3, 7) / (7,) never seen before
    look.extend([1, 2])
    assert look.propose(4) == [3, 7, 1, 2]  # (7, 1, 2) is new; the latest (1, 2) was followed by 3, 7


# -- controller ------------------------------------------------------------------------------------------
def _llama_like_costs(ctrl):
    """verify(m) as measured for qwen 1.5B on llama.cpp, 2 cores: 2 positions cost 1.9 steps, 16 only 5.3."""
    for m, steps in ((1, 1.0), (2, 1.93), (4, 3.1), (8, 4.9), (12, 5.9), (16, 5.3), (32, 9.2)):
        ctrl.record_verify(m, 0.027 * steps)


def test_controller_turns_itself_off_when_drafts_are_rejected():
    ctrl = DepthController()
    _llama_like_costs(ctrl)
    for cls in range(5):
        for _ in range(6):
            ctrl.record_acceptance(drafted=8, accepted=0, cls=cls)
    assert all(Chooser().choose([(0, ctrl, 31, cls)]) == (0, 0) for cls in range(5))


def test_controller_goes_deep_on_long_runs_and_stays_off_short_ones():
    """With llama.cpp's cost curve, short drafts never pay (2 positions cost 1.9 steps) but a copy that
    runs for 20+ tokens pays from depth 15 on (16 positions for 5.3 steps)."""
    ctrl = DepthController()
    _llama_like_costs(ctrl)
    for _ in range(6):
        ctrl.record_acceptance(drafted=31, accepted=25, cls=3)
        ctrl.record_acceptance(drafted=4, accepted=1, cls=0)
    idx, k = Chooser().choose([(0, ctrl, 31, 3)])
    assert k >= 15
    assert Chooser().choose([(0, ctrl, 31, 0)]) == (0, 0)


def test_controller_weighs_bimodal_runs_by_their_samples():
    """Half the offers copy 30 tokens, half break at once: deep drafting still pays (a geometric rate of
    ~0.97 fitted to the same runs would say the same for depth 3, which loses)."""
    ctrl = DepthController()
    _llama_like_costs(ctrl)
    for _ in range(3):
        ctrl.record_acceptance(drafted=31, accepted=30, cls=2)
        ctrl.record_acceptance(drafted=31, accepted=0, cls=2)
    k, rate = ctrl.best(31, 2)
    assert k >= 15 and rate > 1.3 * ctrl.plain_rate()
    assert ctrl.expected_tokens(3, 2) < ctrl.verify(4) / ctrl.verify(1)


def test_controller_accounts_for_draft_cost():
    ctrl = DepthController()
    for m in range(1, 33):
        ctrl.record_verify(m, 0.030 + 0.002 * (m - 1))
    for _ in range(6):
        ctrl.record_acceptance(drafted=4, accepted=2)
    ctrl.record_draft(4, 4 * 0.040)  # a draft token costs more than a target step: never worth it
    assert Chooser().choose([(0, ctrl, 8, 0)])[1] == 0


def test_verify_cost_interpolates_measured_sizes_and_explores_beyond():
    cost = VerifyCost(prior_slope=0.3)
    cost.record(1, 0.030)
    assert cost(16) == pytest.approx(0.030 * (1 + 0.3 * 15))  # nothing measured yet: the prior line
    cost.record(2, 0.058)
    cost.record(16, 0.160)
    assert cost(9) == pytest.approx(0.058 + (0.160 - 0.058) * 7 / 14)
    # beyond: the line through the two largest sizes (here cheaper than the prior line from one step)
    assert cost(32) == pytest.approx(0.160 + (0.160 - 0.058) / 14 * 16)
    assert cost(32) < 0.030 * (1 + 0.3 * 31)
    cost.record(24, 0.500)  # steeper than the prior: the prior line, never below what was measured
    assert cost(31) == pytest.approx(max(0.500, 0.030 * (1 + 0.3 * 30)))


def test_a_fully_accepted_offer_is_followed_to_its_whole_run():
    """A verify that accepts every drafted token only says the run is at least that deep; the rest of the
    offer, followed against what is produced, gives the run's real length (here 3 drafted + 3 more)."""
    ctrl = DepthController()
    sh = ShadowOffer.tail([10, 11, 12, 13, 14, 15, 16, 17], 3, ctrl, 2)
    assert sh.tokens == [13, 14, 15, 16, 17]
    assert not any(sh.observe(t) for t in (13, 14, 15))
    assert sh.observe(99)  # the copy broke: settled
    assert list(ctrl.classes[2].runs) == [6]
    long = ShadowOffer.tail(list(range(100)), 7, ctrl, 3)  # a copy that holds: capped at the span
    assert not any(long.observe(t) for t in range(7, SHADOW_SPAN - 1))
    assert long.observe(SHADOW_SPAN - 1)
    assert list(ctrl.classes[3].runs) == [SHADOW_SPAN]


def test_shadow_offers_teach_a_class_without_verifying():
    """Declined prompt-lookup offers are checked against what was produced: a class whose offers would
    have been right is switched on without spending a verify on it."""
    ctrl = DepthController()
    _llama_like_costs(ctrl)
    assert ctrl.best(31, RESUMED)[0] == 0  # no evidence for resumed copies yet: off
    for _ in range(3):
        sh = ShadowOffer(list(range(40)), ctrl, RESUMED)
        assert not any(sh.observe(t) for t in range(SHADOW_SPAN - 1))
        assert sh.observe(SHADOW_SPAN - 1)
    assert ctrl.best(31, RESUMED)[0] >= 15


def test_lookup_prefers_the_occurrence_with_the_longest_context_and_resumes_copies():
    look = PromptLookup(max_ngram=3, min_ngram=2)
    look.extend([1, 2, 3, 4, 5, 6, 7, 9, 8, 5, 6, 7, 11, 4, 5, 6, 7])
    assert look.propose_with_match(2)[:2] == ([9, 8], 4)  # (4, 5, 6, 7) continues with 9, not with 11
    src = LookupSource()
    src.start([10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21])
    src.extend([12, 13])  # copying from position 2 ...
    assert src.available(31) and src.free_offer()[:2] == [14, 15]
    src.extend([14, 99])  # ... an edit breaks the copy at position 5 (99 instead of 15)
    src.extend([16, 17])  # the copy goes on after the edit
    assert src.available(31) and src.free_offer()[0] == 18 and src.offer_class() == RESUMED


# -- end to end on a real model ----------------------------------------------------------------------
# a pattern the model continues by copying: prompt lookup's home ground (smollm2 is too small to follow
# a "repeat this" instruction reliably)
_LIST = "apples, pears, plums, cherries, peaches, grapes, melons, lemons, limes, oranges.\n"
GROUNDED = _LIST * 2 + "apples, pears,"


@pytest.fixture(scope="module")
def spec_rt(smollm2):
    rt = Runtime(engine="llama.cpp", model=smollm2, plugins={"tokenizer": "llama_cpp", "speculative": "speculative:lookup"})
    yield rt
    rt.close()


def test_lookup_speculation_drafts_accepts_and_reports_stats(spec_rt):
    out = spec_rt.generate(GROUNDED, max_tokens=40, temperature=0)
    st = out.decoder_stats
    assert st["drafted"] > 0 and st["accepted"] > 0 and 0 < st["acceptance_rate"] <= 1
    assert {"mean_depth", "draft_ms", "verify_ms", "steps"} <= set(st)
    assert len(out.token_ids) == 40 or out.finish_reason == "stop"
    assert out.to_dict()["decoder"]["drafted"] == st["drafted"]


def test_rollback_leaves_the_cache_as_if_rejected_tokens_were_never_seen(spec_rt):
    """Two verifications that differ only in their rejected tokens leave identical caches: the next
    logits are bit-identical.  (Same batch shapes on both sides, since llama.cpp's batched kernels round
    differently from its one-token ones.)"""
    loaded, lock = spec_rt.load_generation_model()
    tok = loaded.tokenizer
    prompt = tok.encode("One, two, three, four,")
    kept = tok.encode(" five", add_bos=False)[:1]
    rejected_a = tok.encode(" six, seven", add_bos=False)[:2]
    rejected_b = tok.encode(" banana tree", add_bos=False)[:2]
    nxt = tok.encode(",", add_bos=False)[:1]
    results = []
    with lock:
        s = loaded.session()
        for rejected in (rejected_a, rejected_b):
            s.truncate(0)
            s.eval(prompt)
            s.eval(kept + rejected, all_logits=True)   # verify a 3-token draft ...
            s.truncate(len(prompt) + 1)                # ... accept the first, roll back the rest
            assert s.tokens == prompt + kept
            results.append(s.eval(nxt).copy())
    assert rejected_a != rejected_b
    np.testing.assert_array_equal(results[0], results[1])


def test_a_draft_models_offer_is_never_free(spec_rt):
    """DraftModelSource on a real loaded model (SmolLM2 drafting, outside a decoder): it drafts the model's
    greedy continuation, and its free offer stays empty before and after every draft, so the decoder neither
    follows a draft model's offer past the drafted tokens nor shadow-checks one (lookup's offers, which cost
    nothing, get both: test_a_fully_accepted_offer_is_followed_to_its_whole_run, test_shadow_offers_...)."""
    loaded, lock = spec_rt.load_generation_model()
    tok = loaded.tokenizer
    src = DraftModelSource(lambda: (loaded, lock), max_depth=8)
    src.start(tok.encode(GROUNDED, parse_special=True))
    drafted = []
    for _ in range(2):
        assert src.free_offer() == [] and src.available(31) == 8 and src.free_offer() == []
        ids, qs = src.propose(8, SamplingParams(temperature=0.0), np.random.default_rng(0))
        assert len(ids) == 8 and qs == [{t: 1.0} for t in ids] and src.free_offer() == []
        src.extend(ids)
        drafted += ids
    assert tok.decode(drafted).startswith(" plums, cherries, peaches")  # the list, copied on


def test_sampled_speculative_generation_runs_and_is_seeded(smollm2):
    # a fixed depth policy: the adaptive one chooses depths from measured timings, so its sampled outputs
    # follow the right distribution but are not reproducible token for token from a seed
    rt = Runtime(engine="llama.cpp", model=smollm2, plugins={"tokenizer": "llama_cpp", "speculative": "speculative:lookup"})
    kw = dict(max_tokens=30, temperature=0.8, seed=11)
    a, b = rt.generate(GROUNDED, **kw), rt.generate(GROUNDED, **kw)
    assert a.token_ids == b.token_ids and len(a.token_ids) > 0
    rt.close()


def test_draft_variant_without_a_draft_model_is_a_clear_error(smollm2):
    from corert import PluginError

    rt = Runtime(engine="llama.cpp", model=smollm2, plugins={"tokenizer": "llama_cpp", "speculative": "speculative:draft"})
    with pytest.raises(PluginError, match="draft model"):
        rt.generate("hi", max_tokens=4)
    rt.close()


def test_draft_model_with_another_vocabulary_is_a_clear_error(smollm2, qwen05):
    from corert import PluginError

    rt = Runtime(engine="llama.cpp", model=smollm2, draft_model=qwen05,
                 plugins={"tokenizer": "llama_cpp", "speculative": "speculative:draft"})
    with pytest.raises(PluginError, match="vocabulary"):
        rt.generate("hi", max_tokens=4)
    rt.close()
