"""Choosing the next token from logits: greedy, or temperature + top-k + top-p sampling.

The one sampler of the process: decoders (plain, speculative) and the native engine's batcher all draw
through it, so a seed gives the same tokens on every path.
"""
from __future__ import annotations

import numpy as np

from .interfaces import SamplingParams


def probabilities(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """The candidate ids and their probabilities after top-k, temperature and top-p (nucleus)."""
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


class Sampler:
    """Greedy when temperature <= 0, else seeded sampling.  One per request."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.greedy = params.temperature <= 0.0
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray) -> int:
        if self.greedy:
            return int(np.argmax(logits))
        ids, p = probabilities(logits, self.params)
        return int(ids[self.rng.choice(p.shape[0], p=p)])
