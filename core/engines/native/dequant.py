"""GGML block formats -> our 8-bit layout, one row at a time (numba).

The native engine keeps weight matrices in one of three layouts (see weights.QMatrix):
  q4  4-bit values with an f32 scale and offset per 32 (6 bits/weight): Q4_0, Q4_1, Q4_K, exactly; a
      matrix of Q4_K tensors only keeps Q4_K's factored scales (to_q4k), which the vnni layout stores in
      4.5 bits/weight, the file's
  q6  int8 values, an int8 scale per 16 and an f32 scale per 256 (8.6 bits/weight; the vnni layout packs the
      6-bit values of Q6_K: 6.6): Q6_K exactly (its
      int8 sub-block scales and f16 super-block scale as they are); Q8_0 / Q5_0 / Q4_0 tensors joined with a
      Q6_K one in a matrix take an f32 scale per 32 instead (9.5 bits/weight), their int8 scales all 1
  q8  int8 values with an f16 scale per 32 (8.5 bits/weight): Q8_0 and Q5_0 exactly; any other type
      (Q5_1, Q5_K, F16, BF16, F32) is decoded one row at a time into a scratch row and requantized (fused
      tensors that would meet only here, as Q6_K beside Q4_K, are split instead: weights.SplitMatrix)
so no f32 copy of a whole tensor ever exists.  The decoders
follow ggml's block layouts (ggml-common.h); tests compare them with gguf-py's numpy dequantizers.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ... import numba_setup  # noqa: F401  (threading layer before the first parallel kernel)
from ...kernels.simd import f32_from_bits

# ggml type ids -> (values per block, bytes per block)
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 30
BLOCKS = {F32: (1, 4), F16: (1, 2), Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22), Q5_1: (32, 24),
          Q8_0: (32, 34), Q4_K: (256, 144), Q5_K: (256, 176), Q6_K: (256, 210), BF16: (1, 2)}
NAMES = {F32: "F32", F16: "F16", Q4_0: "Q4_0", Q4_1: "Q4_1", Q5_0: "Q5_0", Q5_1: "Q5_1", Q8_0: "Q8_0",
         Q4_K: "Q4_K", Q5_K: "Q5_K", Q6_K: "Q6_K", BF16: "BF16"}


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
    """Decode one row (its raw bytes ``src``) of a ``ggml_type`` tensor into ``out`` (f32, row length)."""
    n = out.shape[0]
    if ggml_type == F32:
        f = src.view(np.float32)
        for i in range(n):
            out[i] = f[i]
    elif ggml_type == F16:
        for i in range(n):
            out[i] = _h(src, 2 * i, tab)
    elif ggml_type == BF16:  # the top 16 bits of an f32
        for i in range(n):
            out[i] = f32_from_bits((np.int32(src[2 * i]) | (np.int32(src[2 * i + 1]) << 8)) << 16)
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
def f16_bits(x):
    """The IEEE half-precision bit pattern nearest to ``x`` (0 <= x < 65520); numba has no float16."""
    if x <= 0.0:
        return np.uint16(0)
    if x < 6.103515625e-05:  # subnormal: multiples of 2^-24
        return np.uint16(np.rint(x * 16777216.0))
    m, e = math.frexp(np.float64(x))  # x = m * 2^e, m in [0.5, 1)
    f = np.int64(np.rint((2.0 * m - 1.0) * 1024.0))
    ex = e + 14
    if f == 1024:  # rounding carried into the exponent
        f = 0
        ex += 1
    return np.uint16((ex << 10) | f)


@njit(cache=True)
def quantize_row_q8(x, qs, sc, tab):
    """Symmetric 8-bit blocks of 32 with an f16 scale: ``sc[b]`` = f16(max|x| / 127)."""
    for b in range(x.shape[0] // 32):
        amax = np.float32(0.0)
        for j in range(b * 32, b * 32 + 32):
            amax = max(amax, abs(x[j]))
        bits = f16_bits(amax / np.float32(127.0))
        d = tab[bits]
        inv = np.float32(1.0) / d if d > 0 else np.float32(0.0)
        sc[b] = bits
        for j in range(b * 32, b * 32 + 32):
            qs[j] = np.int8(max(-127.0, min(127.0, np.rint(x[j] * inv))))


@njit(cache=True)
def _direct_q8(src, ggml_type, qs, sc):
    """Q8_0 and Q5_0 rows are int8 blocks of 32 with an f16 scale already: copy them exactly."""
    size = 34 if ggml_type == Q8_0 else 22
    for b in range(qs.shape[0] // 32):
        o = b * size
        sc[b] = np.uint16(np.int64(src[o]) | (np.int64(src[o + 1]) << 8))
        if ggml_type == Q8_0:
            for j in range(32):
                qs[b * 32 + j] = np.int8(_i8(src[o + 2 + j]))
        else:
            qh = np.int64(src[o + 2]) | (np.int64(src[o + 3]) << 8) | (np.int64(src[o + 4]) << 16) \
                | (np.int64(src[o + 5]) << 24)
            for j in range(16):
                q = np.int64(src[o + 6 + j])
                qs[b * 32 + j] = np.int8(((q & 0xF) | (((qh >> j) & 1) << 4)) - 16)
                qs[b * 32 + j + 16] = np.int8(((q >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16)


@njit(parallel=True, cache=True)
def to_q8(raw, ggml_type, qs, sc, tab):
    """Every row of ``raw`` (uint8, one GGUF row per line) into int8 ``qs`` and f16-bit scales ``sc``."""
    rows, cols = qs.shape
    for r in prange(rows):
        if ggml_type == Q8_0 or ggml_type == Q5_0:
            _direct_q8(raw[r], ggml_type, qs[r], sc[r])
        else:
            row = np.empty(cols, np.float32)
            dequant_row(raw[r], ggml_type, row, tab)
            quantize_row_q8(row, qs[r], sc[r], tab)


#: types the q8 layout keeps exactly (the others are requantized)
Q8_EXACT = (Q8_0, Q5_0)
Q4_SOURCES = (Q4_0, Q4_1, Q4_K)


@njit(parallel=True, cache=True)
def to_q4(raw, ggml_type, packed, d, m, tab):
    """Q4_0 / Q4_1 / Q4_K rows, exactly, as 4-bit values q with a scale and an offset per 32 values:
    ``y = d * q + m``.  ``packed[r, 16 b + j]`` holds q of value 32 b + j (low nibble) and 32 b + 16 + j."""
    rows = packed.shape[0]
    for r in prange(rows):
        src = raw[r]
        pr = packed[r]
        if ggml_type == Q4_0 or ggml_type == Q4_1:
            size = 18 if ggml_type == Q4_0 else 20
            qo = 2 if ggml_type == Q4_0 else 4
            for b in range(d.shape[1]):
                o = b * size
                db = _h(src, o, tab)
                d[r, b] = db
                m[r, b] = -8.0 * db if ggml_type == Q4_0 else _h(src, o + 2, tab)
                for j in range(16):
                    pr[16 * b + j] = src[o + qo + j]
        else:  # Q4_K: 8 sub-blocks of 32 per 256; 32 bytes hold sub-block 2g (low) and 2g+1 (high)
            for sb in range(d.shape[1] // 8):
                o = sb * 144
                dd = _h(src, o, tab)
                dmin = _h(src, o + 2, tab)
                for g in range(4):
                    for h in range(2):
                        sc, mn = _scale_min_k4(2 * g + h, src, o + 4)
                        b = sb * 8 + 2 * g + h
                        d[r, b] = dd * np.float32(sc)
                        m[r, b] = -(dmin * np.float32(mn))
                        for j in range(16):
                            lo = (np.int64(src[o + 16 + 32 * g + j]) >> (4 * h)) & 0xF
                            hi = (np.int64(src[o + 16 + 32 * g + 16 + j]) >> (4 * h)) & 0xF
                            pr[16 * b + j] = np.uint8(lo | (hi << 4))


@njit(parallel=True, cache=True)
def to_q4k(raw, packed, sc, mn, dd, dmin):
    """Q4_K rows, exactly, with the file's scales kept factored: 4-bit values q (``packed`` as to_q4's), the
    6-bit scale ``sc`` and min ``mn`` of each 32 values (uint8), and each 256's f16 scale ``dd`` and min
    scale ``dmin`` as f16 bits (uint16): ``y = dd * sc * q - dmin * mn``.  The vnni layout keeps this form
    (fewer bytes per weight than to_q4's scale and offset per 32)."""
    for r in prange(packed.shape[0]):
        src, pr = raw[r], packed[r]
        for sb in range(dd.shape[1]):
            o = sb * 144
            dd[r, sb] = np.uint16(np.int64(src[o]) | (np.int64(src[o + 1]) << 8))
            dmin[r, sb] = np.uint16(np.int64(src[o + 2]) | (np.int64(src[o + 3]) << 8))
            for g in range(4):
                for h in range(2):
                    b = sb * 8 + 2 * g + h
                    s, m = _scale_min_k4(2 * g + h, src, o + 4)
                    sc[r, b], mn[r, b] = np.uint8(s), np.uint8(m)
                    for j in range(16):
                        lo = (np.int64(src[o + 16 + 32 * g + j]) >> (4 * h)) & 0xF
                        hi = (np.int64(src[o + 16 + 32 * g + 16 + j]) >> (4 * h)) & 0xF
                        pr[16 * b + j] = np.uint8(lo | (hi << 4))


def q4k_scales(sc: np.ndarray, mn: np.ndarray, dd: np.ndarray, dmin: np.ndarray, tab: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """to_q4k's factored scales as to_q4's f32 scale and offset per 32 values (the same values: an f16 times a
    6-bit integer is exact in f32)."""
    per = sc.shape[1] // dd.shape[1]
    scale = sc.astype(np.float32) * np.repeat(tab[dd], per, axis=1)
    offset = -(mn.astype(np.float32) * np.repeat(tab[dmin], per, axis=1))
    return scale, offset


@njit(parallel=True, cache=True)
def dequantize(raw, ggml_type, out, tab):
    """Rows of ``raw`` decoded to f32 (small tensors only: norms, biases)."""
    for r in prange(out.shape[0]):
        dequant_row(raw[r], ggml_type, out[r], tab)


@njit(cache=True)
def embed_rows(raw, ggml_type, ids, out, tab):
    """``out[t]`` = row ``ids[t]`` of a GGUF tensor, decoded (embedding lookup straight from the file)."""
    for t in range(ids.shape[0]):
        dequant_row(raw[ids[t]], ggml_type, out[t], tab)


#: types kept exactly in the q6 layout: Q6_K's 16-value sub-blocks need it; the symmetric 32-blocks join a
#: Q6_K tensor in one matrix without rounding
Q6_SOURCES = (Q6_K, Q8_0, Q5_0, Q4_0)


@njit(parallel=True, cache=True)
def to_q6(raw, ggml_type, qs, sub, sup, tab):
    """Rows of a symmetric type, exactly, as int8 ``qs`` (rows, cols), an int8 scale per 16 values ``sub``
    (rows, cols / 16) and an f32 scale ``sup`` per 256 values (rows, cols / 256) or per 32 (rows, cols / 32,
    a matrix where a 32-block type joins Q6_K): W = q * sub * sup.  Q6_K: q - 32, its sub-block scales and
    its f16 super-block scale (repeated per 32 in the finer form); the 32-block types: sub 1, sup their f16
    scale."""
    rows, cols = qs.shape
    per256 = sup.shape[1] * 256 // cols  # super scales per 256 values: 1, or 8 (one per 32)
    for r in prange(rows):
        src, q, s, u = raw[r], qs[r], sub[r], sup[r]
        if ggml_type == Q6_K:
            for b in range(cols // 256):
                o = b * 210
                d = _h(src, o + 208, tab)
                for k in range(per256):
                    u[per256 * b + k] = d
                for j in range(16):
                    s[16 * b + j] = np.int8(_i8(src[o + 192 + j]))
                for half in range(2):
                    ql, qh, y = o + 64 * half, o + 128 + 32 * half, 256 * b + 128 * half
                    for l in range(32):
                        h = np.int64(src[qh + l])
                        a = np.int64(src[ql + l])
                        c = np.int64(src[ql + l + 32])
                        q[y + l] = np.int8(((a & 0xF) | ((h & 3) << 4)) - 32)
                        q[y + l + 32] = np.int8(((c & 0xF) | (((h >> 2) & 3) << 4)) - 32)
                        q[y + l + 64] = np.int8(((a >> 4) | (((h >> 4) & 3) << 4)) - 32)
                        q[y + l + 96] = np.int8(((c >> 4) | (((h >> 6) & 3) << 4)) - 32)
        else:
            s[:] = 1
            if ggml_type == Q4_0:
                for b in range(cols // 32):
                    o = b * 18
                    u[b] = _h(src, o, tab)
                    for j in range(16):
                        v = np.int64(src[o + 2 + j])
                        q[32 * b + j] = np.int8((v & 0xF) - 8)
                        q[32 * b + 16 + j] = np.int8((v >> 4) - 8)
            else:  # Q8_0, Q5_0: int8 blocks of 32 with an f16 scale
                bits = np.empty(cols // 32, np.uint16)
                _direct_q8(src, ggml_type, q, bits)
                for b in range(cols // 32):
                    u[b] = tab[bits[b]]
