"""A token bitmask applied to logits in place (structured output, corert.constraint)."""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def apply_bitmask(logits: np.ndarray, mask: np.ndarray) -> None:
    """logits[i] = -inf where bit i of ``mask`` (int32 words, little-endian bits) is 0; ids past the mask's
    bits (a model vocabulary padded beyond the tokenizer's) are never allowed."""
    n_bits = mask.shape[0] * 32
    for i in range(logits.shape[0]):
        if i >= n_bits or (mask[i >> 5] >> (i & 31)) & 1 == 0:
            logits[i] = -np.inf
