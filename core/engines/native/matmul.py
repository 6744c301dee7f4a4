"""Quantized matrix products: weight rows in 32-value blocks (q8: int8 + f16 scale; q4: 4-bit + f32 scale
and offset) times f32 activation rows.

One kernel serves decode (one row) and prefill/verification (many rows): every output element is computed
by the same dot-product routine whatever the number of rows, so evaluating k tokens at once gives
bit-identical results to evaluating them one at a time.  Weight rows are spread over numba threads
(prange); the token loop is tiled so a tile of activations stays in cache while the weights stream.

Variants (a dispatch table, chosen once when a model loads):
  avx2    a block's products summed by one flat loop that LLVM vectorizes (ymm/zmm FMAs, fastmath)
  neon    q8 blocks summed in two 16-value halves (128-bit registers on AArch64); q4 as avx2 (its loop is
          16 bytes wide already)
  scalar  strictly ordered sums, no fastmath: the reference every variant is tested against
Loop bounds inside a block are runtime values and indices unsigned, on purpose: a constant 32-trip loop is
unrolled and LLVM then vectorizes the block loop with gathers; signed indices get numba's negative-index
wraparound code, which hides the contiguous loads.  Either costs 5-10x.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, uint64

from . import numba_setup  # noqa: F401

QK = 32  # values per block in both layouts
#: Tokens per tile of the activation matrix.
TOKEN_TILE = 32


# -- q8: int8 blocks, f16 scale (bits looked up in a 65536-entry table) ------------------------------------
@njit(fastmath=True, cache=True, boundscheck=False)
def dot_q8_wide(w, x, s, tab, bs):
    acc = np.float32(0.0)
    ubs = uint64(bs)
    for b in range(s.shape[0]):
        o = uint64(b) * ubs
        t = np.float32(0.0)
        for j in range(ubs):
            t += np.float32(w[o + j]) * x[o + j]
        acc += t * tab[s[b]]
    return acc


@njit(fastmath=True, cache=True, boundscheck=False)
def dot_q8_halves(w, x, s, tab, bs):
    acc = np.float32(0.0)
    ubs = uint64(bs)
    half = ubs >> uint64(1)
    for b in range(s.shape[0]):
        o = uint64(b) * ubs
        t0 = np.float32(0.0)
        for j in range(half):
            t0 += np.float32(w[o + j]) * x[o + j]
        t1 = np.float32(0.0)
        for j in range(half, ubs):
            t1 += np.float32(w[o + j]) * x[o + j]
        acc += (t0 + t1) * tab[s[b]]
    return acc


@njit(cache=True, boundscheck=False)
def dot_q8_scalar(w, x, s, tab, bs):
    acc = np.float32(0.0)
    for b in range(s.shape[0]):
        t = np.float32(0.0)
        for j in range(b * bs, b * bs + bs):
            t += np.float32(w[j]) * x[j]
        acc += t * tab[s[b]]
    return acc


# -- q4: 16 bytes per block (low nibble: value j, high: value j+16), y = d * q + m -------------------------
@njit(fastmath=True, cache=True, boundscheck=False)
def dot_q4_wide(p, x, d, m, xsum, half):
    """sum_b d[b] * (q_b . x_b) + m[b] * sum(x_b); ``xsum`` holds the block sums of x."""
    acc = np.float32(0.0)
    uh = uint64(half)
    for b in range(d.shape[0]):
        o = uint64(b) * uh
        ox = o + o
        t = np.float32(0.0)
        for j in range(uh):
            q = p[o + j]
            t += np.float32(q & np.uint8(15)) * x[ox + j] + np.float32(q >> np.uint8(4)) * x[ox + uh + j]
        acc += t * d[b] + m[b] * xsum[b]
    return acc


@njit(cache=True, boundscheck=False)
def dot_q4_scalar(p, x, d, m, xsum, half):
    acc = np.float32(0.0)
    for b in range(d.shape[0]):
        t = np.float32(0.0)
        for j in range(half):
            t += np.float32(p[b * half + j] & 15) * x[2 * b * half + j]
        for j in range(half):
            t += np.float32(p[b * half + j] >> 4) * x[2 * b * half + half + j]
        acc += t * d[b] + m[b] * xsum[b]
    return acc


@njit(cache=True)
def block_sums(x, out):
    """``out[t, b]`` = sum of x[t, 32 b : 32 b + 32], in order (the q4 offset term)."""
    for t in range(x.shape[0]):
        for b in range(out.shape[1]):
            s = np.float32(0.0)
            for j in range(b * QK, b * QK + QK):
                s += x[t, j]
            out[t, b] = s


# -- matrix products: out[t, r] = W[r] . x[t]; x (n, cols) f32, out (n, rows) f32 --------------------------
# ``bs`` is always QK, passed at run time so LLVM cannot unroll the block loop (see the module docstring).
@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def q8_avx2(qs, sc, x, out, tab, bs):
    rows, n = qs.shape[0], x.shape[0]
    for t0 in range(0, n, TOKEN_TILE):
        t1 = min(n, t0 + TOKEN_TILE)
        for r in prange(rows):
            for t in range(t0, t1):
                out[t, r] = dot_q8_wide(qs[r], x[t], sc[r], tab, bs)


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def q8_neon(qs, sc, x, out, tab, bs):
    rows, n = qs.shape[0], x.shape[0]
    for t0 in range(0, n, TOKEN_TILE):
        t1 = min(n, t0 + TOKEN_TILE)
        for r in prange(rows):
            for t in range(t0, t1):
                out[t, r] = dot_q8_halves(qs[r], x[t], sc[r], tab, bs)


@njit(parallel=True, cache=True, boundscheck=False)
def q8_scalar(qs, sc, x, out, tab, bs):
    rows, n = qs.shape[0], x.shape[0]
    for t0 in range(0, n, TOKEN_TILE):
        t1 = min(n, t0 + TOKEN_TILE)
        for r in prange(rows):
            for t in range(t0, t1):
                out[t, r] = dot_q8_scalar(qs[r], x[t], sc[r], tab, bs)


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def q4_avx2(p, d, m, x, xsum, out, bs):
    rows, n = p.shape[0], x.shape[0]
    for t0 in range(0, n, TOKEN_TILE):
        t1 = min(n, t0 + TOKEN_TILE)
        for r in prange(rows):
            for t in range(t0, t1):
                out[t, r] = dot_q4_wide(p[r], x[t], d[r], m[r], xsum[t], bs // 2)


@njit(parallel=True, cache=True, boundscheck=False)
def q4_scalar(p, d, m, x, xsum, out, bs):
    rows, n = p.shape[0], x.shape[0]
    for t0 in range(0, n, TOKEN_TILE):
        t1 = min(n, t0 + TOKEN_TILE)
        for r in prange(rows):
            for t in range(t0, t1):
                out[t, r] = dot_q4_scalar(p[r], x[t], d[r], m[r], xsum[t], bs // 2)


#: variant -> (q8 kernel, q4 kernel)
KERNELS = {"avx2": (q8_avx2, q4_avx2), "neon": (q8_neon, q4_avx2), "scalar": (q8_scalar, q4_scalar)}
