"""The q8 pages' rotation (numba): a normalized fast Walsh-Hadamard transform, orthogonal and its own inverse.

H x is computed in log2(block) de-interleaving stages, y[j] = x[2j] + x[2j+1], y[j + n/2] = x[2j] - x[2j+1]:
stage s adds the values whose indices differ in bit s, the same sums as the textbook in-place butterflies
with span 2^s, but every stage is one loop LLVM vectorizes (the in-place form with spans 1, 2, 4 stays
scalar: ~165 ns per 64 values instead of ~35).  No fastmath: a value's rotation is the same f32 sums
whatever calls it, so a row's result never depends on the batch.
"""
from __future__ import annotations

import numpy as np
from numba import njit, uint64


def rotation_block(head_dim: int) -> int:
    """Values the rotation mixes: the largest power of two dividing head_dim (64 for head_dim 64)."""
    return head_dim & -head_dim


@njit(cache=True, boundscheck=False)
def _stage(src, dst, half):
    for j in range(uint64(half)):
        a, c = src[uint64(2) * j], src[uint64(2) * j + uint64(1)]
        dst[j] = a + c
        dst[j + uint64(half)] = a - c


@njit(cache=True, boundscheck=False)
def rotate_vec(v, tmp, block):
    """In place, every ``block`` values of the contiguous f32 vector v: v <- H v / sqrt(block).  ``tmp`` is
    scratch of at least ``block`` f32."""
    norm = np.float32(1.0 / np.sqrt(block))
    half = block // 2
    t = tmp[:block]
    for b0 in range(0, v.shape[0], block):
        x = v[b0:b0 + block]
        n = 1
        while n < block:
            _stage(x, t, half)
            n *= 2
            if n == block:  # odd stage count: the result is in t
                for d in range(uint64(block)):
                    x[d] = t[d] * norm
                break
            _stage(t, x, half)
            n *= 2
            if n == block:
                for d in range(uint64(block)):
                    x[d] *= norm


@njit(cache=True, boundscheck=False)
def rotate(x, block):
    """In place, every ``block`` values of the last axis of x (rows, heads, d): x <- H x / sqrt(block)."""
    tmp = np.empty(block, np.float32)
    for i in range(x.shape[0]):
        for h in range(x.shape[1]):
            rotate_vec(x[i, h], tmp, block)
