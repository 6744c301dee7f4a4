"""Speculative decoding: acceptance rules, losslessness on a real model's distributions, KV rollback,
the adaptive controller, and end-to-end generation."""
from __future__ import annotations


import numpy as np
import pytest

from corert import Runtime
from corert.ab import chi2_critical as ab_chi2_critical
from corert.interfaces import SamplingParams
from corert.plugins.speculative.acceptance import accept_greedy, accept_sampled, sparse_probs
from corert.plugins.speculative.controller import Chooser, DepthController
from corert.plugins.speculative.lookup import PromptLookup

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
    rt = Runtime(model=smollm2, plugins={"tokenizer": "llama_cpp"})
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
def test_controller_turns_itself_off_when_acceptance_is_low():
    ctrl = DepthController(max_depth=8)
    chooser = Chooser(probe_every=8)
    for m in range(1, 10):
        ctrl.record_verify(m, 0.030 + 0.010 * (m - 1))  # each extra position costs a third of a step
    for _ in range(20):
        ctrl.record_acceptance(drafted=4, accepted=0)
    choices = [chooser.choose([(0, ctrl, 8)])[1] for _ in range(32)]
    assert choices.count(0) >= 28 and max(choices) <= 2  # off, but for short probes


def test_controller_goes_deep_when_drafts_are_accepted_and_verify_is_cheap():
    ctrl = DepthController(max_depth=8)
    for m in range(1, 10):
        ctrl.record_verify(m, 0.030 + 0.001 * (m - 1))
    for _ in range(20):
        ctrl.record_acceptance(drafted=8, accepted=8)
    idx, k = Chooser().choose([(0, ctrl, 8)])
    assert k == 8


def test_controller_accounts_for_draft_cost():
    ctrl = DepthController(max_depth=8)
    for m in range(1, 10):
        ctrl.record_verify(m, 0.030 + 0.002 * (m - 1))
    for _ in range(20):
        ctrl.record_acceptance(drafted=4, accepted=2)  # ~67% acceptance
    ctrl.record_draft(4, 4 * 0.040)  # a draft token costs more than a target step: never worth it
    assert Chooser().choose([(0, ctrl, 8)])[1] == 0


# -- end to end on a real model ----------------------------------------------------------------------
# a pattern the model continues by copying: prompt lookup's home ground (smollm2 is too small to follow
# a "repeat this" instruction reliably)
_LIST = "apples, pears, plums, cherries, peaches, grapes, melons, lemons, limes, oranges.\n"
GROUNDED = _LIST * 2 + "apples, pears,"


@pytest.fixture(scope="module")
def spec_rt(smollm2):
    rt = Runtime(model=smollm2, plugins={"tokenizer": "llama_cpp", "speculative": "speculative:lookup"})
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


def test_sampled_speculative_generation_runs_and_is_seeded(smollm2):
    # a fixed depth policy: the adaptive one chooses depths from measured timings, so its sampled outputs
    # follow the right distribution but are not reproducible token for token from a seed
    rt = Runtime(model=smollm2, plugins={"tokenizer": "llama_cpp", "speculative": "speculative:lookup"})
    kw = dict(max_tokens=30, temperature=0.8, seed=11)
    a, b = rt.generate(GROUNDED, **kw), rt.generate(GROUNDED, **kw)
    assert a.token_ids == b.token_ids and len(a.token_ids) > 0
    rt.close()


def test_draft_variant_without_a_draft_model_is_a_clear_error(smollm2):
    from corert import PluginError

    rt = Runtime(model=smollm2, plugins={"tokenizer": "llama_cpp", "speculative": "speculative:draft"})
    with pytest.raises(PluginError, match="draft model"):
        rt.generate("hi", max_tokens=4)
    rt.close()


def test_draft_model_with_another_vocabulary_is_a_clear_error(smollm2, qwen05):
    from corert import PluginError

    rt = Runtime(model=smollm2, draft_model=qwen05,
                 plugins={"tokenizer": "llama_cpp", "speculative": "speculative:draft"})
    with pytest.raises(PluginError, match="vocabulary"):
        rt.generate("hi", max_tokens=4)
    rt.close()
