"""Sampling helpers over a logits row (numba): greedy argmax and temperature / top-k / top-p sampling."""
from __future__ import annotations

import numpy as np
from numba import njit

from . import numba_setup  # noqa: F401


@njit(cache=True)
def argmax(logits):
    """Index of the largest logit (the first one on ties, like numpy)."""
    best, bi = logits[0], 0
    for i in range(1, logits.shape[0]):
        if logits[i] > best:
            best, bi = logits[i], i
    return bi


@njit(cache=True)
def sample(logits, temperature, top_k, top_p, u):
    """Draw a token id with uniform number ``u`` in [0, 1): softmax(logits / temperature) restricted to the
    ``top_k`` most likely ids (0: all), then to the smallest prefix whose mass reaches ``top_p``."""
    if temperature <= 0.0:
        return argmax(logits)
    n = logits.shape[0]
    k = n if top_k <= 0 or top_k > n else top_k
    order = np.argsort(-logits)[:k]
    p = np.empty(k, np.float64)
    m = np.float64(logits[order[0]])
    total = 0.0
    for i in range(k):
        p[i] = np.exp((np.float64(logits[order[i]]) - m) / temperature)
        total += p[i]
    cut, acc = k, 0.0
    for i in range(k):
        acc += p[i] / total
        if acc >= top_p:
            cut = i + 1
            break
    mass = 0.0
    for i in range(cut):
        mass += p[i]
    target, acc = u * mass, 0.0
    for i in range(cut):
        acc += p[i]
        if acc > target:
            return order[i]
    return order[cut - 1]
