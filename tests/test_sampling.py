"""The host's one sampler (corert.sampling), which decoders and the native batcher share."""
import numpy as np

from corert.interfaces import SamplingParams
from corert.sampling import Sampler, probabilities

LOGITS = np.array([0.1, 3.0, 2.9, -1.0], np.float32)


def test_temperature_zero_and_top_k_one_are_greedy():
    assert Sampler(SamplingParams(temperature=0.0, seed=1))(LOGITS) == 1
    one = Sampler(SamplingParams(temperature=1.0, top_k=1, top_p=1.0, seed=1))
    assert {one(LOGITS) for _ in range(50)} == {1}


def test_top_k_two_draws_in_the_softmax_ratio():
    sample = Sampler(SamplingParams(temperature=1.0, top_k=2, top_p=1.0, seed=7))
    draws = [sample(LOGITS) for _ in range(4000)]
    assert set(draws) == {1, 2}  # top-k 2 never picks the others
    # p(1) = e^3 / (e^3 + e^2.9); 4000 seeded draws: the standard error is 0.008
    assert abs(draws.count(1) / 4000 - 1 / (1 + np.exp(-0.1))) < 0.03


def test_top_p_keeps_the_smallest_prefix_reaching_the_mass():
    # softmax: p(1) = 0.506, p(2) = 0.457, then 0.028 and 0.009
    ids, p = probabilities(LOGITS, SamplingParams(temperature=1.0, top_k=0, top_p=0.6))
    assert ids.tolist() == [1, 2] and abs(p.sum() - 1.0) < 1e-12
    ids, p = probabilities(LOGITS, SamplingParams(temperature=1.0, top_k=0, top_p=0.5))
    assert ids.tolist() == [1] and p.tolist() == [1.0]


def test_a_seed_gives_the_same_draws():
    params = SamplingParams(temperature=0.9, top_k=0, top_p=0.95, seed=3)
    rows = np.random.default_rng(0).standard_normal((64, 50)).astype(np.float32)
    a, b = Sampler(params), Sampler(params)
    assert [a(r) for r in rows] == [b(r) for r in rows]
