"""GGML block formats -> our 8-bit layout, one row at a time (numba).

The native engine keeps every weight matrix as int8 values in blocks of ``bs`` (64, or 32 when a row is not
a multiple of 64) with one f32 scale per block: 8.5 bits per weight at bs=64.  A GGUF row is decoded into a
small f32 scratch row and requantized at once, so no f32 copy of a whole tensor ever exists.  The decoders
follow ggml's block layouts (ggml-common.h); tests compare them with gguf-py's numpy dequantizers.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import numba_setup  # noqa: F401  (threading layer before the first parallel kernel)

# ggml type ids -> (values per block, bytes per block)
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K = 0, 1, 2, 3, 6, 7, 8, 12, 13, 14
BLOCKS = {F32: (1, 4), F16: (1, 2), Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22), Q5_1: (32, 24),
          Q8_0: (32, 34), Q4_K: (256, 144), Q5_K: (256, 176), Q6_K: (256, 210)}
NAMES = {F32: "F32", F16: "F16", Q4_0: "Q4_0", Q4_1: "Q4_1", Q5_0: "Q5_0", Q5_1: "Q5_1", Q8_0: "Q8_0",
         Q4_K: "Q4_K", Q5_K: "Q5_K", Q6_K: "Q6_K"}


@njit(cache=True, inline="always")
def _h(src, o, tab):
    """The f16 at byte offset ``o`` as f32."""
    return tab[np.int64(src[o]) | (np.int64(src[o + 1]) << 8)]


@njit(cache=True)
def _scale_min_k4(j, q, o):
    """Q4_K/Q5_K: the 6-bit scale and min of sub-block ``j`` from the 12 packed bytes at ``q[o:]``."""
    if j < 4:
        return np.int64(q[o + j]) & 63, np.int64(q[o + j + 4]) & 63
    d = (np.int64(q[o + j + 4]) & 0xF) | ((np.int64(q[o + j - 4]) >> 6) << 4)
    m = (np.int64(q[o + j + 4]) >> 4) | ((np.int64(q[o + j]) >> 6) << 4)
    return d, m


@njit(cache=True)
def dequant_row(src, ggml_type, out, tab):
    """Decode one row (its raw bytes ``src``) of a ``ggml_type`` tensor into ``out`` (f32, row length).
    F32 rows are plain views and never come here."""
    n = out.shape[0]
    if ggml_type == F16:
        for i in range(n):
            out[i] = _h(src, 2 * i, tab)
    elif ggml_type == Q8_0:
        for b in range(n // 32):
            o = b * 34
            d = _h(src, o, tab)
            for j in range(32):
                v = np.int64(src[o + 2 + j])
                out[b * 32 + j] = d * np.float32(v - 256 if v > 127 else v)
    elif ggml_type == Q4_0:
        for b in range(n // 32):
            o = b * 18
            d = _h(src, o, tab)
            for j in range(16):
                q = np.int64(src[o + 2 + j])
                out[b * 32 + j] = d * np.float32((q & 0xF) - 8)
                out[b * 32 + j + 16] = d * np.float32((q >> 4) - 8)
    elif ggml_type == Q4_1:
        for b in range(n // 32):
            o = b * 20
            d = _h(src, o, tab)
            m = _h(src, o + 2, tab)
            for j in range(16):
                q = np.int64(src[o + 4 + j])
                out[b * 32 + j] = d * np.float32(q & 0xF) + m
                out[b * 32 + j + 16] = d * np.float32(q >> 4) + m
    elif ggml_type == Q5_0 or ggml_type == Q5_1:
        size = 22 if ggml_type == Q5_0 else 24
        for b in range(n // 32):
            o = b * size
            d = _h(src, o, tab)
            m = np.float32(0.0)
            if ggml_type == Q5_1:
                m = _h(src, o + 2, tab)
                o += 2
            qh = np.int64(src[o + 2]) | (np.int64(src[o + 3]) << 8) | (np.int64(src[o + 4]) << 16) \
                | (np.int64(src[o + 5]) << 24)
            for j in range(16):
                q = np.int64(src[o + 6 + j])
                x0 = (q & 0xF) | (((qh >> j) & 1) << 4)
                x1 = (q >> 4) | (((qh >> (j + 16)) & 1) << 4)
                if ggml_type == Q5_0:
                    out[b * 32 + j] = d * np.float32(x0 - 16)
                    out[b * 32 + j + 16] = d * np.float32(x1 - 16)
                else:
                    out[b * 32 + j] = d * np.float32(x0) + m
                    out[b * 32 + j + 16] = d * np.float32(x1) + m
    elif ggml_type == Q4_K or ggml_type == Q5_K:
        size = 144 if ggml_type == Q4_K else 176
        for b in range(n // 256):
            o = b * size
            d = _h(src, o, tab)
            dmin = _h(src, o + 2, tab)
            sco = o + 4  # 12 bytes of packed scales/mins
            qho = o + 16  # Q5_K: 32 bytes of high bits
            qso = o + 16 if ggml_type == Q4_K else o + 48
            y = b * 256
            for g in range(4):  # 64 values per group: low nibbles then high nibbles of 32 bytes
                sc, mn = _scale_min_k4(2 * g, src, sco)
                d1 = d * np.float32(sc)
                m1 = dmin * np.float32(mn)
                sc, mn = _scale_min_k4(2 * g + 1, src, sco)
                d2 = d * np.float32(sc)
                m2 = dmin * np.float32(mn)
                for l in range(32):
                    q = np.int64(src[qso + 32 * g + l])
                    lo = q & 0xF
                    hi = q >> 4
                    if ggml_type == Q5_K:
                        h = np.int64(src[qho + l])
                        lo += ((h >> (2 * g)) & 1) << 4
                        hi += ((h >> (2 * g + 1)) & 1) << 4
                    out[y + 64 * g + l] = d1 * np.float32(lo) - m1
                    out[y + 64 * g + 32 + l] = d2 * np.float32(hi) - m2
    elif ggml_type == Q6_K:
        for b in range(n // 256):
            o = b * 210
            d = _h(src, o + 208, tab)
            for half in range(2):
                ql = o + 64 * half
                qh = o + 128 + 32 * half
                sc = o + 192 + 8 * half
                y = b * 256 + 128 * half
                for l in range(32):
                    s = l // 16
                    h = np.int64(src[qh + l])
                    a = np.int64(src[ql + l])
                    c = np.int64(src[ql + l + 32])
                    q1 = ((a & 0xF) | ((h & 3) << 4)) - 32
                    q2 = ((c & 0xF) | (((h >> 2) & 3) << 4)) - 32
                    q3 = ((a >> 4) | (((h >> 4) & 3) << 4)) - 32
                    q4 = ((c >> 4) | (((h >> 6) & 3) << 4)) - 32
                    out[y + l] = d * np.float32(_i8(src[sc + s])) * np.float32(q1)
                    out[y + l + 32] = d * np.float32(_i8(src[sc + s + 2])) * np.float32(q2)
                    out[y + l + 64] = d * np.float32(_i8(src[sc + s + 4])) * np.float32(q3)
                    out[y + l + 96] = d * np.float32(_i8(src[sc + s + 6])) * np.float32(q4)


@njit(cache=True, inline="always")
def _i8(u):
    v = np.int64(u)
    return v - 256 if v > 127 else v


@njit(cache=True)
def quantize_row(x, bs, qs, sc):
    """Symmetric 8-bit blocks: ``sc[b] = max|x| / 127`` over block ``b`` of ``bs`` values."""
    for b in range(x.shape[0] // bs):
        amax = np.float32(0.0)
        for j in range(b * bs, b * bs + bs):
            amax = max(amax, abs(x[j]))
        d = amax / np.float32(127.0)
        inv = np.float32(1.0) / d if d > 0 else np.float32(0.0)
        sc[b] = d
        for j in range(b * bs, b * bs + bs):
            qs[j] = np.int8(np.rint(x[j] * inv))


@njit(parallel=True, cache=True)
def requantize(raw, ggml_type, bs, qs, sc, tab):
    """Every row of ``raw`` (uint8, one GGUF row per line) into ``qs`` (int8) and ``sc`` (f32 scales)."""
    rows, cols = qs.shape
    for r in prange(rows):
        row = np.empty(cols, np.float32)
        dequant_row(raw[r], ggml_type, row, tab)
        quantize_row(row, bs, qs[r], sc[r])


@njit(parallel=True, cache=True)
def dequantize(raw, ggml_type, out, tab):
    """Rows of ``raw`` decoded to f32 (small tensors only: norms, biases)."""
    for r in prange(out.shape[0]):
        dequant_row(raw[r], ggml_type, out[r], tab)
