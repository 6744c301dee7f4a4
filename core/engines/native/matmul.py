"""Quantized matrix products over weights in *row groups*: out[t, r] = W[r] . x[t].

Layout.  A weight matrix is cut into groups of ``GROUP`` (64) consecutive output rows, and inside a group
the values are stored column-major: for each 32-value block and each column of it, the 64 rows' values sit
next to each other.  The kernel then walks the columns once per group and updates 64 row accumulators with
one broadcast x value each: the innermost loop runs over rows, contiguous, and LLVM turns it into plain
vector multiply-adds (4 zmm / 8 ymm registers per column).  The row-major layout it replaces needed a
horizontal sum of the vector register after every 32-value block, which cost more than the products and
kept numba at ~5 G multiply-adds/s per core; this layout runs ~4x faster (see git history for figures).

  q8: ``q`` int8, group g: [block b][column c][row r]; ``scale`` f16 bits (uint16): [block b][row r];
      W = q * scale.
  q6: ``q`` as q8's; ``sub`` int8: [16-value block][row r]; ``sup`` f32: [256-value (or 32-value) block][row r];
      W = q * sub * sup (Q6_K's own scales, see dequant.to_q6).
  q4: ``q`` uint8, group g: [block b][pair j][row r]; byte low nibble = value j, high = value j + 16 of the
      block (the GGUF Q4 packing, kept); ``scale``, ``offset`` f32: [block b][row r]; W = q * scale + offset.

Rows are padded with zeros to a multiple of ``GROUP``; the padding is never written to the output.

Batch invariance: a token's outputs are computed by the same loop whatever the other tokens, so k tokens
evaluated at once give bit-identical results to one at a time (what makes speculative output identical to
plain decoding).  Groups are spread over numba threads (prange); the tokens of a batch are looped inside a
group, so the group's weights stay in L1 while every token uses them.

Variants (a dispatch table in products.py, chosen once when a model loads; ``vnni``, the int8 one, is in
matmul_i8.py):
  avx2    fastmath: LLVM vectorizes the row loop with FMAs, on ymm or zmm
  neon    the same code: a contiguous row loop vectorizes on 128-bit registers as it is
  scalar  no fastmath (no FMA contraction, no reassociation): the reference every variant is tested against
Loop bounds are runtime values and indices unsigned, on purpose: a constant trip count gets the loop
unrolled instead of vectorized, and signed indices get numba's negative-index wraparound code.  Nibbles are
split in float arithmetic (floor(q / 16)): numba widens integer bit operations to 64 bits, which would
halve the vector width.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, types, uint64
from numba.extending import overload

from ... import numba_setup  # noqa: F401

QK = 32  # values per block in both layouts
#: output rows per group
GROUP = 64


# -- layout conversion (at load) ---------------------------------------------------------------------------
def padded_rows(rows: int) -> int:
    return -(-rows // GROUP) * GROUP


def _pad_rows(a: np.ndarray) -> np.ndarray:
    extra = padded_rows(a.shape[0]) - a.shape[0]
    return a if extra == 0 else np.concatenate([a, np.zeros((extra,) + a.shape[1:], a.dtype)])


def group_q8(q: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-major q8 (rows, cols) int8 and (rows, cols/32) uint16 -> the grouped layout."""
    rows, cols = q.shape
    nb = cols // QK
    q, scale = _pad_rows(q), _pad_rows(scale)
    ng = q.shape[0] // GROUP
    gq = q.reshape(ng, GROUP, nb, QK).transpose(0, 2, 3, 1).reshape(ng, -1)
    gs = scale.reshape(ng, GROUP, nb).transpose(0, 2, 1).reshape(ng, -1)
    return np.ascontiguousarray(gq), np.ascontiguousarray(gs)


def group_q4(packed: np.ndarray, scale: np.ndarray, offset: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-major q4 (rows, cols/2) uint8 and (rows, cols/32) f32 scale and offset -> the grouped layout."""
    rows, half_cols = packed.shape
    nb = half_cols * 2 // QK
    packed, scale, offset = _pad_rows(packed), _pad_rows(scale), _pad_rows(offset)
    ng = packed.shape[0] // GROUP
    gq = packed.reshape(ng, GROUP, nb, QK // 2).transpose(0, 2, 3, 1).reshape(ng, -1)
    per_block = [a.reshape(ng, GROUP, nb).transpose(0, 2, 1).reshape(ng, -1) for a in (scale, offset)]
    return np.ascontiguousarray(gq), np.ascontiguousarray(per_block[0]), np.ascontiguousarray(per_block[1])


def group_q6(q: np.ndarray, sub: np.ndarray, sup: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-major q6 (rows, cols) int8, (rows, cols/16) int8 and (rows, cols/256 or cols/32) f32 -> the grouped
    layout: ``q`` as q8's, ``sub`` [16-value block][row], ``sup`` [super block][row]."""
    gq, _ = group_q8(q, np.zeros((q.shape[0], q.shape[1] // QK), np.uint16))
    return gq, _per_group_block(sub), _per_group_block(sup)


def _per_group_block(a: np.ndarray) -> np.ndarray:
    """(rows, blocks) -> (groups, blocks * GROUP): [block][row] inside a group."""
    a = _pad_rows(a)
    ng, nb = a.shape[0] // GROUP, a.shape[1]
    return np.ascontiguousarray(a.reshape(ng, GROUP, nb).transpose(0, 2, 1).reshape(ng, -1))


# -- one group, one token: acc[r] = W[g*GROUP + r] . x -------------------------------------------------------
#: values per q6 scale (Q6_K's sub-blocks)
Q6_BLOCK = 16


# q8 and q6 share a body: ``block`` values per scale ``s`` (QK for q8, Q6_BLOCK for q6).  q8: ``s`` f16 bits
# read through the table ``tab``; q6: ``s`` the int8 sub-block scales and ``tab`` the group's f32 super-block
# scales.  The overloads below are picked by ``s``'s dtype when numba compiles, so each layout gets its own loop.
def _scale(s, tab, ob, b, r, ug):
    """The f32 scale of row r in block b (``ob`` = b * ug) (typed per layout below)."""


@overload(_scale, inline="always")
def _scale_of(s, tab, ob, b, r, ug):
    if s.dtype == types.uint16:
        return lambda s, tab, ob, b, r, ug: tab[s[ob + r]]

    def q6_scale(s, tab, ob, b, r, ug):
        # an int8 times an f16 value: exact in f32, the scale Q6_K's dequantization uses
        per_sup = uint64(s.shape[0]) // uint64(tab.shape[0])
        return np.float32(s[ob + r]) * tab[(uint64(b) // per_sup) * uint64(ug) + uint64(r)]
    return q6_scale


def group_part(tab, g):
    """What a group kernel reads its scales through: a per-group array's row g (q6's super-block scales), or
    the argument as it is (the f16 table; None)."""


@overload(group_part, inline="always")
def _group_part_of(tab, g):
    if isinstance(tab, types.Array) and tab.ndim == 2:
        return lambda tab, g: tab[g]
    return lambda tab, g: tab


@njit(fastmath=True, cache=True, boundscheck=False)
def int8_group_wide(q, s, tab, block, x, acc, tmp, gs):
    ug, ubs = uint64(gs), uint64(block)
    for r in range(ug):
        acc[r] = 0.0
    for b in range(uint64(s.shape[0]) // ug):
        for r in range(ug):
            tmp[r] = 0.0
        base = b * ubs * ug
        for c in range(ubs):
            xc = x[b * ubs + c]
            o = base + c * ug
            for r in range(ug):
                tmp[r] += xc * np.float32(q[o + r])
        ob = b * ug
        for r in range(ug):
            acc[r] += tmp[r] * _scale(s, tab, ob, b, r, ug)


@njit(cache=True, boundscheck=False)
def int8_group_scalar(q, s, tab, block, x, acc, tmp, gs):
    for r in range(gs):
        acc[r] = 0.0
    for b in range(s.shape[0] // gs):
        for r in range(gs):
            tmp[r] = 0.0
        for c in range(block):
            xc = x[b * block + c]
            for r in range(gs):
                tmp[r] += xc * np.float32(q[(b * block + c) * gs + r])
        for r in range(gs):
            acc[r] += tmp[r] * _scale(s, tab, b * gs, b, r, gs)


@njit(fastmath=True, cache=True, boundscheck=False)
def q4_group_wide(q, d, m, x, xsum, acc, tmp, gs):
    ug, half = uint64(gs), uint64(QK // 2)
    for r in range(ug):
        acc[r] = 0.0
    for b in range(uint64(xsum.shape[0])):
        for r in range(ug):
            tmp[r] = 0.0
        base = b * half * ug
        for j in range(half):
            x_lo = x[b * uint64(QK) + j]
            x_hi = x[b * uint64(QK) + half + j]
            o = base + j * ug
            for r in range(ug):
                v = np.float32(q[o + r])
                hi = np.floor(v * np.float32(0.0625))
                tmp[r] += x_lo * (v - np.float32(16.0) * hi) + x_hi * hi
        s = xsum[b]
        ob = b * ug
        for r in range(ug):
            acc[r] += tmp[r] * d[ob + r] + m[ob + r] * s


@njit(cache=True, boundscheck=False)
def q4_group_scalar(q, d, m, x, xsum, acc, tmp, gs):
    half = QK // 2
    for r in range(gs):
        acc[r] = 0.0
    for b in range(xsum.shape[0]):
        for r in range(gs):
            tmp[r] = 0.0
        for j in range(half):
            for r in range(gs):
                byte = q[(b * half + j) * gs + r]
                tmp[r] += x[b * QK + j] * np.float32(byte & 15) + x[b * QK + half + j] * np.float32(byte >> 4)
        for r in range(gs):
            acc[r] += tmp[r] * d[b * gs + r] + m[b * gs + r] * xsum[b]


@njit(cache=True)
def block_sums(x, out):
    """``out[t, b]`` = sum of x[t, 32 b : 32 b + 32], in order (the q4 offset term)."""
    for t in range(x.shape[0]):
        for b in range(out.shape[1]):
            s = np.float32(0.0)
            for j in range(b * QK, b * QK + QK):
                s += x[t, j]
            out[t, b] = s


# -- matrix products: x (n, cols) f32, out (n, rows) f32 ------------------------------------------------------
# ``wide`` picks the group kernel (a literal per variant, see products.py); the drivers only move results, so
# one driver serves both: numba caches a function by name, and a driver taking its group kernel as a
# parameter would not stay cached.
@njit(parallel=True, cache=True, boundscheck=False)
def int8_matmul(q, s, x, out, tab, block, wide):
    """q8 (``tab``: the f16 table, ``block`` QK) or q6 (``tab``: the super-block scales, ``block`` Q6_BLOCK)."""
    rows, n = out.shape[1], x.shape[0]
    for g in prange(q.shape[0]):
        acc, tmp = np.empty(GROUP, np.float32), np.empty(GROUP, np.float32)
        r0 = g * GROUP
        for t in range(n):
            if wide:
                int8_group_wide(q[g], s[g], group_part(tab, g), block, x[t], acc, tmp, GROUP)
            else:
                int8_group_scalar(q[g], s[g], group_part(tab, g), block, x[t], acc, tmp, GROUP)
            for r in range(min(GROUP, rows - r0)):
                out[t, r0 + r] = acc[r]


@njit(parallel=True, cache=True, boundscheck=False)
def q4_matmul(q, d, m, x, xsum, out, wide):
    rows, n = out.shape[1], x.shape[0]
    for g in prange(q.shape[0]):
        acc, tmp = np.empty(GROUP, np.float32), np.empty(GROUP, np.float32)
        r0 = g * GROUP
        for t in range(n):
            if wide:
                q4_group_wide(q[g], d[g], m[g], x[t], xsum[t], acc, tmp, GROUP)
            else:
                q4_group_scalar(q[g], d[g], m[g], x[t], xsum[t], acc, tmp, GROUP)
            for r in range(min(GROUP, rows - r0)):
                out[t, r0 + r] = acc[r]
