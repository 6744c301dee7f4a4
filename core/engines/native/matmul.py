"""Quantized matrix products: int8 weight blocks (one f32 scale per block) times f32 activation rows.

One kernel serves decode (one row) and prefill/verification (many rows): every output element is computed
by the same dot-product routine whatever the number of rows, so evaluating k tokens at once gives
bit-identical results to evaluating them one at a time.  Rows of the weight matrix are spread over numba
threads (prange); the token loop is tiled so a tile of activations stays in cache while the weights stream.

Variants (a dispatch table, chosen once when a model loads):
  avx2    the block's dot product is one flat loop LLVM vectorizes (ymm/zmm FMAs); fastmath reassociates it
  neon    each block summed in four 16-value chunks (narrower vectors: 128-bit registers on AArch64)
  scalar  strictly ordered sums, no fastmath: the reference every variant is tested against
Indices are unsigned on purpose: numba adds negative-index wraparound code for signed ones, which stops
LLVM from seeing contiguous loads and vectorizing.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, uint64

from . import numba_setup  # noqa: F401

#: Tokens per tile of the activation matrix.
TOKEN_TILE = 32


@njit(fastmath=True, cache=True, boundscheck=False)
def dot_wide(w, x, s, bs):
    """sum_b s[b] * sum_j w[b*bs+j] * x[b*bs+j]; the inner loop is the vectorized one."""
    acc = np.float32(0.0)
    ubs = uint64(bs)
    for b in range(s.shape[0]):
        o = uint64(b) * ubs
        t = np.float32(0.0)
        for j in range(ubs):
            t += np.float32(w[o + j]) * x[o + j]
        acc += t * s[b]
    return acc


@njit(fastmath=True, cache=True, boundscheck=False)
def dot_chunk16(w, x, s, bs):
    """Each block summed in four chunks (16 values at bs=64); the chunk length is not a compile-time
    constant, so LLVM keeps the chunk loop (and vectorizes it) instead of unrolling it and vectorizing the
    block loop with gathers."""
    acc = np.float32(0.0)
    ch = uint64(bs) >> uint64(2)
    for b in range(s.shape[0]):
        t = np.float32(0.0)
        for c in range(uint64(4)):
            o = uint64(b) * uint64(bs) + c * ch
            u = np.float32(0.0)
            for j in range(ch):
                u += np.float32(w[o + j]) * x[o + j]
            t += u
        acc += t * s[b]
    return acc


@njit(cache=True, boundscheck=False)
def dot_scalar(w, x, s, bs):
    acc = np.float32(0.0)
    for b in range(s.shape[0]):
        t = np.float32(0.0)
        for j in range(b * bs, b * bs + bs):
            t += np.float32(w[j]) * x[j]
        acc += t * s[b]
    return acc


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def matmul_avx2(wq, ws, x, out, bs):
    """``out[t, r] = W[r] . x[t]``; wq (rows, cols) int8, ws (rows, cols/bs) f32, x (n, cols), out (n, rows)."""
    rows, n = wq.shape[0], x.shape[0]
    for t0 in range(0, n, TOKEN_TILE):
        t1 = min(n, t0 + TOKEN_TILE)
        for r in prange(rows):
            for t in range(t0, t1):
                out[t, r] = dot_wide(wq[r], x[t], ws[r], bs)


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def matmul_neon(wq, ws, x, out, bs):
    rows, n = wq.shape[0], x.shape[0]
    for t0 in range(0, n, TOKEN_TILE):
        t1 = min(n, t0 + TOKEN_TILE)
        for r in prange(rows):
            for t in range(t0, t1):
                out[t, r] = dot_chunk16(wq[r], x[t], ws[r], bs)


@njit(parallel=True, cache=True, boundscheck=False)
def matmul_scalar(wq, ws, x, out, bs):
    rows, n = wq.shape[0], x.shape[0]
    for t0 in range(0, n, TOKEN_TILE):
        t1 = min(n, t0 + TOKEN_TILE)
        for r in prange(rows):
            for t in range(t0, t1):
                out[t, r] = dot_scalar(wq[r], x[t], ws[r], bs)


MATMUL = {"avx2": matmul_avx2, "neon": matmul_neon, "scalar": matmul_scalar}
DOT = {"avx2": dot_wide, "neon": dot_chunk16, "scalar": dot_scalar}
