"""Token-tree speculative decoding: the tree acceptance rules (greedy, and the multi-candidate sampling rule's
distribution), candidates and their prefix tree, the tree-size controller, and greedy generation on the
native engine identical to plain decoding."""
from __future__ import annotations

import numpy as np
import pytest

from corert import Runtime
from corert.interfaces import SamplingParams
from corert.plugins.speculative.controller import FROM_OUTPUT, RESUMED
from corert.plugins.speculative.tree import Candidate, TreeController, TreeLookupSource, merge
from corert.plugins.speculative.tree_accept import accept_tree_greedy, accept_tree_sampled

from test_speculative import FULL, chi2_critical, chi2_stat
from test_speculative_native import PROMPTS


def _rows(best: list[int], vocab: int = 10) -> np.ndarray:
    rows = np.zeros((len(best), vocab), np.float32)
    rows[np.arange(len(best)), best] = 5.0
    return rows


def test_merge_shares_prefixes():
    tokens, parents = merge([(1, 2, 3), (1, 2, 4), (5,), (1, 2)])
    assert tokens == [-1, 1, 2, 3, 4, 5] and parents == [-1, 0, 1, 2, 2, 0]


def test_greedy_walks_the_branch_the_target_chooses():
    tokens, parents = [9, 1, 2, 3, 4, 5], [-1, 0, 1, 2, 2, 0]  # 9 -> 1 -> 2 -> {3, 4};  9 -> 5
    # the target wants 1, 2, 4, then 7: the second branch below node 2
    assert accept_tree_greedy(tokens, parents, _rows([1, 2, 4, 0, 7, 0])) == ([0, 1, 2, 4], 7)
    assert accept_tree_greedy(tokens, parents, _rows([5, 0, 0, 0, 0, 6])) == ([0, 5], 6)
    assert accept_tree_greedy(tokens, parents, _rows([3, 0, 0, 0, 0, 0])) == ([0], 3)


def test_multi_candidate_sampling_reproduces_the_target_distribution():
    """Root with three lookup candidates (point masses) 0, 2 and 4, and two candidates 1, 3 below node '0':
    over 20k draws the first token follows p1 and, when it is 0, the second follows p2 (chi-square,
    p=0.001) — each emitted token distributed exactly as sampling the target alone."""
    p1 = np.log(np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04]))
    p2 = np.log(np.array([0.05, 0.3, 0.05, 0.5, 0.05, 0.05]))
    tokens, parents = [7, 0, 2, 4, 1, 3], [-1, 0, 0, 0, 1, 1]
    rows = np.stack([p1, p2, p1, p1, p1, p1])  # only rows 0 and 1 matter here
    qs = [{t: 1.0} for t in tokens]
    rng = np.random.default_rng(3)
    first, second = np.zeros(6, np.int64), np.zeros(6, np.int64)
    for _ in range(20_000):
        path, nxt = accept_tree_sampled(tokens, parents, qs, rows, FULL, rng)
        out = [tokens[j] for j in path[1:]] + [nxt]
        first[out[0]] += 1
        if out[0] == 0:
            second[out[1]] += 1
    for counts, logits in ((first, p1), (second, p2)):
        stat, df = chi2_stat(counts, np.exp(logits))
        assert stat < chi2_critical(df), (stat, df, counts)


def test_sampling_with_draft_distributions_stays_lossless():
    """Children drawn from a draft distribution q (not point masses), equal draws merged into one node
    tried as often as it was drawn: the rule still yields p."""
    p = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))
    q = {0: 0.1, 1: 0.1, 2: 0.3, 3: 0.3, 4: 0.2}
    rng = np.random.default_rng(11)
    counts = np.zeros(5, np.int64)
    keys, w = np.array(list(q)), np.array(list(q.values()))
    for _ in range(20_000):
        a, b = rng.choice(keys, size=2, p=w)  # two independent draws from q, merged when equal
        tokens, parents, copies = (([7, int(a)], [-1, 0], [1, 2]) if a == b
                                   else ([7, int(a), int(b)], [-1, 0, 0], [1, 1, 1]))
        path, nxt = accept_tree_sampled(tokens, parents, [q] * len(tokens), np.stack([p] * len(tokens)),
                                        FULL, rng, copies)
        counts[tokens[path[1]] if len(path) > 1 else nxt] += 1
    stat, df = chi2_stat(counts, np.exp(p))
    assert stat < chi2_critical(df), (stat, df, counts)


def test_lookup_offers_several_matches_from_prompt_and_output():
    src = TreeLookupSource()
    prompt = [1, 2, 3, 10, 11, 1, 2, 3, 20, 21, 5]
    src.start(prompt)
    src.extend([1, 2, 3, 30, 31, 1, 2, 3])  # the output repeats the n-gram too
    cands = src.candidates(4)
    assert {c.tokens[:2] for c in cands} == {(10, 11), (20, 21), (30, 31)}
    assert {c.origin for c in cands} == {"prompt", "output"}


def test_controller_grows_the_tree_with_evidence_and_stays_off_without():
    ctrl = TreeController()
    for m, s in ((1, 1.0), (2, 1.3), (4, 1.6), (8, 2.0), (16, 3.2), (32, 6.6)):  # steps, as measured natively
        ctrl.record_verify(m, s)
    long = Candidate(tuple(range(20)), 3, "prompt")
    a, b = Candidate((10, 11, 12, 13), 1, "prompt"), Candidate((20, 21, 22, 23), FROM_OUTPUT, "output")
    assert ctrl.plan([b], 4) == []  # a bare 2-gram of the output: no evidence it would be accepted
    plan = ctrl.plan([long, b], 20)
    assert [c for c, _ in plan] == [long] and len(plan[0][1]) >= 7  # a long copy goes deep alone
    for _ in range(3):  # each class now holds half the time: two branches beat one
        for cls in (1, FROM_OUTPUT):
            ctrl.record_acceptance(4, 4, cls)
            ctrl.record_acceptance(4, 0, cls)
    assert {c for c, _ in ctrl.plan([a, b], 4)} == {a, b}
    assert len(ctrl.plan([a, b], 4, max_nodes=5)) == 1  # the context's end leaves room for one branch
    for _ in range(6):
        for cls in (1, 3, FROM_OUTPUT):
            ctrl.record_acceptance(4, 0, cls)
    assert ctrl.plan([long, a, b], 20) == []


@pytest.fixture(scope="module")
def plain_outputs(smollm2):
    rt = Runtime(engine="native", model=smollm2, plugins={"speculative": "plain", "kv_cache": "paged:q8"})
    outs = [rt.generate(p, max_tokens=40, temperature=0).token_ids for p in PROMPTS]
    rt.close()
    return outs


def test_greedy_tree_speculation_equals_plain_decoding(smollm2, plain_outputs):
    rt = Runtime(engine="native", model=smollm2, plugins={"speculative": "speculative:tree",
                                                           "kv_cache": "paged:q8"})
    decoder = rt.decoder()
    nodes = 0
    for prompt, expected in zip(PROMPTS, plain_outputs):
        out = rt.generate(prompt, max_tokens=40, temperature=0)
        assert out.token_ids == expected
        nodes += out.decoder_stats["tree_nodes"]
    assert nodes > 0 and rt.decoder() is decoder  # trees were verified; the learned costs persist
    assert sum(e.weight for e in decoder.verify.times.values()) > 0
    rt.close()


def test_sampled_tree_speculation_runs_and_is_lossless_in_kind(smollm2):
    rt = Runtime(engine="native", model=smollm2, plugins={"speculative": "speculative:tree"})
    out = rt.generate(PROMPTS[1], max_tokens=30, temperature=0.7, seed=1)
    assert 0 < len(out.token_ids) <= 30
    rt.close()
