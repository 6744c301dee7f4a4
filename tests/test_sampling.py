"""The host's one sampler (corert.sampling), which decoders and the native batcher share."""
import numpy as np
import pytest

from corert.interfaces import SamplingParams
from corert.sampling import Sampler, choose_rows, probabilities

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


def _numpy_candidates(logits, params):
    """The reference: argpartition for top-k, a stable sort, float64 softmax, the nucleus cut."""
    k = params.top_k if 0 < params.top_k < logits.shape[0] else logits.shape[0]
    ids = np.argpartition(logits, -k)[-k:] if k < logits.shape[0] else np.arange(logits.shape[0])
    ids = ids[np.argsort(-logits[ids], kind="stable")]
    z = logits[ids].astype(np.float64) / max(params.temperature, 1e-6)
    p = np.exp(z - z[0])
    p /= p.sum()
    if 0.0 < params.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), params.top_p) + 1)
        ids, p = ids[:keep], p[:keep] / p[:keep].sum()
    return ids, p


@pytest.mark.parametrize("n", [5, 1000, 49152])
def test_kernel_candidates_equal_the_numpy_reference(n):
    # top-k 40 takes the insertion buffer, 100 and 700 the selection; top-p alone the pre-filtered sort
    rng = np.random.default_rng(n)
    for scale in (0.5, 4.0):
        x = (rng.standard_normal(n) * scale).astype(np.float32)
        for top_k in (0, 1, 3, 40, 100, 700, n):
            for top_p in (1.0, 0.0, 0.5, 0.95):
                params = SamplingParams(temperature=0.7, top_k=top_k, top_p=top_p)
                ids, p = probabilities(x, params)
                want_ids, want_p = _numpy_candidates(x, params)
                order, want = np.argsort(ids), np.argsort(want_ids)
                assert ids[order].tolist() == want_ids[want].tolist(), (scale, top_k, top_p)
                np.testing.assert_allclose(p[order], want_p[want], rtol=1e-9, atol=1e-15)


def test_rows_chosen_together_equal_each_sampler_alone():
    # a batch step's mixed block: greedy, seeded top-k / top-p / full-vocabulary draws, a logit processor
    kinds = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=1),
             SamplingParams(temperature=1.2, top_k=0, top_p=0.9, seed=2),
             SamplingParams(temperature=1.0, top_k=0, top_p=1.0, seed=3),
             SamplingParams(temperature=0.8, seed=4, logit_bias=((7, 5.0),))]
    together, alone = [Sampler(p) for p in kinds], [Sampler(p) for p in kinds]
    rng = np.random.default_rng(0)
    for _ in range(30):
        block = (rng.standard_normal((2 * len(kinds), 300)) * 2).astype(np.float32)
        rows = rng.permutation(block.shape[0])[:len(kinds)]  # any rows of the block, in any order
        assert choose_rows(together, block, rows) == [s(block[r]) for s, r in zip(alone, rows)]
    greedy = [Sampler(SamplingParams(temperature=0.0)) for _ in range(3)]
    assert choose_rows(greedy, block[:3], range(3)) == np.argmax(block[:3], axis=1).tolist()
