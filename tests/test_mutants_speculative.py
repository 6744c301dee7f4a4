"""The adaptive depth controller's arithmetic and the chooser's decision, on given timings and runs.
Written to kill mutmut's mutants of corert/plugins/speculative/controller.py (scripts/mutation.sh); the
end-to-end behaviour on a real model is in test_speculative.py."""
from __future__ import annotations

import pytest

from corert.plugins.speculative.controller import (FROM_OUTPUT, RESUMED, SHADOW_SPAN, Chooser, DepthController,
                                                  ShadowOffer, match_class)


def _ctrl(verify, draft=0.0) -> DepthController:
    """A controller whose verify of m positions takes ``verify(m)`` seconds (every size measured)."""
    c = DepthController()
    for m in range(1, 33):
        c.record_verify(m, verify(m))
    if draft:
        c.record_draft(1, draft)
    return c


def test_match_classes():
    assert [match_class(n) for n in (0, 3, 4, 7, 8, 15, 16, 100)] == [0, 0, 1, 1, 2, 2, 3, 3]
    # a short copy resumed after an edit has its own class; a long one is the copy in progress
    assert match_class(2, resumed=True) == match_class(7, resumed=True) == RESUMED == 4
    assert [match_class(n, resumed=True) for n in (8, 15, 16, 40)] == [2, 2, 3, 3]
    # copies from the output have their own classes, by anchor only (resumed or not)
    assert [match_class(n, from_output=True) for n in (0, 7, 8, 40)] == [FROM_OUTPUT] * 2 + [FROM_OUTPUT + 1] * 2
    assert match_class(3, resumed=True, from_output=True) == FROM_OUTPUT == 5


def test_record_draft_keeps_the_cost_per_token():
    c = DepthController()
    c.record_draft(0, 0.5)  # nothing drafted: no evidence (and no division by zero)
    assert c.draft_cost.value == 0.0 and c.draft_cost.weight == 0.0
    c.record_draft(1, 0.02)
    assert c.draft_cost.value == pytest.approx(0.02)
    d = DepthController()
    d.record_draft(4, 0.08)
    assert d.draft_cost.value == pytest.approx(0.02)


def test_a_rejected_shadow_offer_records_its_run_in_its_class():
    c = DepthController()
    sh = ShadowOffer([5, 6, 7, 8], c, 2)
    assert sh.observe(5) is False and sh.observe(6) is False
    assert sh.observe(9) is True  # the third token differs: a run of 2
    assert list(c.classes[2].runs) == [2]
    assert all(not c.classes[k].runs for k in (0, 1, 3, 4))


def test_a_fully_matched_shadow_offer_records_its_length():
    c = DepthController()
    sh = ShadowOffer([1, 2, 3], c, 1)
    assert [sh.observe(t) for t in (1, 2, 3)] == [False, False, True]
    assert list(c.classes[1].runs) == [3]
    long = ShadowOffer(list(range(100)), c, 3)
    assert not any(long.observe(t) for t in range(SHADOW_SPAN - 1)) and long.observe(SHADOW_SPAN - 1)
    assert list(c.classes[3].runs) == [SHADOW_SPAN]


FLAT = lambda m: 0.03 + 0.001 * (m - 1)  # noqa: E731 - verifying more positions costs little


def test_chooser_takes_the_source_that_pays_and_says_which():
    good = _ctrl(FLAT)
    k, rate = good.best(8, 3)
    assert k > 1 and rate > good.plain_rate()
    # the first source offers nothing: skipped, the next one is chosen, by its index
    assert Chooser().choose([(4, _ctrl(FLAT), 0, 3), (7, good, 8, 3)]) == (7, k)
    # one token on offer is still worth a step of k = 1
    assert Chooser().choose([(2, good, 1, 3)]) == (2, 1)
    # a later source that declines (k = 0) does not replace an earlier one that pays
    assert Chooser().choose([(7, good, 8, 3), (9, _ctrl(FLAT), 8, 0)]) == (7, k)
    # equal offers: the first keeps it
    assert Chooser().choose([(5, good, 8, 3), (6, good, 8, 3)]) == (5, k)
    assert Chooser().choose([]) == (0, 0)


def test_chooser_on_slow_steps():
    # seconds per step: every rate is below 1 token/s, and still the better one wins
    slow = _ctrl(lambda m: 20.0 + 0.1 * m)
    k, rate = slow.best(8, 3)
    assert rate < 1.0 and k > 0
    assert Chooser().choose([(3, slow, 8, 3)]) == (3, k)


def test_chooser_margin():
    # class 2's prior: half the offers run 8 tokens, half none; verify grows with the size
    c = _ctrl(lambda m: 0.03 * (1 + 0.1 * (m - 1)))
    k, rate = c.best(8, 2)
    gain = rate / c.plain_rate()
    assert 2.5 < gain < 3.0, gain
    assert Chooser(margin=1.5).choose([(1, c, 8, 2)]) == (1, k)
    assert Chooser(margin=2.0).choose([(1, c, 8, 2)]) == (0, 0)  # pays, but not by the margin


def test_chooser_reads_plain_decoding_from_the_first_controller():
    # the controllers share verify timings in the decoder; the chooser reads plain decoding's rate once
    first = _ctrl(FLAT)
    # here plain decoding runs 100 tokens/s and drafting 102: better, though not by the 5% margin, while
    # the first controller's plain rate (33 tokens/s) is beaten by far
    odd = _ctrl(lambda m: 0.01 if m == 1 else 0.0098 * m)
    assert odd.best(8, 3)[0] == 1
    assert Chooser().choose([(0, first, 0, 3), (1, odd, 8, 3)]) == (1, 1)


def test_ema_is_a_plain_mean_until_enough_evidence():
    from corert.plugins.speculative.controller import Ema

    e = Ema(0.0)
    for x in (1.0, 2.0, 3.0, 4.0):
        e.add(x)
    assert e.value == pytest.approx(2.5) and e.weight == 4.0
    e.add(12.0)  # from the fifth sample on: alpha = 0.25
    assert e.value == pytest.approx(2.5 + 0.25 * 9.5) and e.weight == 5.0


def test_verify_cost_before_any_measurement():
    from corert.plugins.speculative.controller import VerifyCost

    assert VerifyCost()(1) == VerifyCost()(7) == 1.0


def test_depths_follow_the_ladder_up_to_what_is_available():
    c = DepthController()
    assert c.depths(0) == [] and c.depths(1) == [1]
    assert c.depths(4) == [1, 2, 3, 4] and c.depths(5) == [1, 2, 3, 5]
    assert c.depths(40) == [1, 2, 3, 5, 7, 11, 15, 23, 31]
    assert DepthController(max_depth=9).depths(40) == [1, 2, 3, 5, 7, 9]


def test_defaults_are_class_zero_and_ties_keep_plain_decoding():
    c = _ctrl(lambda m: 0.25 * m)  # exact binary fractions: every k of class 3 ties with plain decoding
    assert c.best(8, 3) == (0, 4.0)
    assert c.best(8) == c.best(8, 0)
    c.record_acceptance(8, 5)
    assert list(c.classes[0].runs) == [5]
    # class 0's prior runs (0 and 4) and the run just recorded, each cut at 3
    assert c.expected_tokens(3) == c.expected_tokens(3, 0) == 1.0 + (0 + 3 + 3) / 3
    d = _ctrl(FLAT)
    k, rate = d.best(1, 3)
    assert (k, rate) == (1, pytest.approx(2 / FLAT(2)))


def test_verify_cost_below_between_and_beyond_the_measured_sizes():
    from corert.plugins.speculative.controller import VerifyCost

    c = VerifyCost(prior_slope=0.3)
    c.record(4, 0.08)
    c.record(8, 0.1)
    assert c(2) == pytest.approx(0.08 * 2 / 4)  # below: proportional to the smallest measured size
    c.record(1, 0.03)
    c.record(2, 0.05)
    c.record(16, 0.2)
    assert c(12) == pytest.approx(0.1 + (0.2 - 0.1) * (12 - 8) / (16 - 8))  # between the nearest two
    assert c(6) == pytest.approx(0.08 + (0.1 - 0.08) * (6 - 4) / (8 - 4))
    d = VerifyCost(prior_slope=0.3)
    d.record(2, 0.06)
    assert d(5) == pytest.approx(max(0.06, 0.06 / 2 * (1 + 0.3 * 4)))  # beyond: the prior line from one step


def test_a_draft_token_the_target_would_never_sample_is_rejected():
    import numpy as np

    from corert.interfaces import SamplingParams
    from corert.plugins.speculative.acceptance import accept_sampled

    logits = np.log(np.array([0.05, 0.5, 0.4, 0.05]))
    top2 = SamplingParams(temperature=1.0, top_k=2, top_p=1.0)  # the target samples only tokens 1 and 2
    rng = np.random.default_rng(0)
    for _ in range(200):
        n_ok, nxt = accept_sampled([3], [{3: 1.0}], np.stack([logits, logits]), top2, rng)
        assert n_ok == 0 and nxt in (1, 2)


def test_sampled_acceptance_stops_at_the_first_rejection_and_draws_from_the_residual():
    import numpy as np

    from corert.interfaces import SamplingParams
    from corert.plugins.speculative.acceptance import accept_sampled

    top2 = SamplingParams(temperature=1.0, top_k=2, top_p=1.0)
    logits = np.log(np.array([0.05, 0.55, 0.4, 0.05]))  # the target samples 1 (p ~ .58) and 2 (p ~ .42)
    rows = np.stack([logits, logits, logits])
    rng = np.random.default_rng(0)
    for _ in range(200):
        # the draft's 3 is never sampled by the target: rejected at once, whatever came before it
        n_ok, nxt = accept_sampled([1, 3], [{1: 0.5, 2: 0.5}, {1: 0.9, 3: 0.1}], rows, top2, rng)
        assert n_ok in (0, 1)
        if n_ok == 1:
            # q puts 0.9 on 1, more than p: the residual max(0, p - q) holds token 2 alone
            assert nxt == 2


def test_acceptance_rate_defaults_to_class_zero():
    c = DepthController()
    for _ in range(6):
        c.record_acceptance(8, 8, cls=1)
    assert c.acceptance() == c.acceptance(0) != c.acceptance(1)
    assert c.best(31) == c.best(31, 0) != c.best(31, 1)
