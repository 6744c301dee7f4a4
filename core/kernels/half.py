"""f16 <-> f32 in numba kernels, which have no float16 type on the CPU: a half is its uint16 bit pattern.

``f16_bits`` rounds an f32 (given as its uint32 bits) to the nearest half; ``f16_value`` widens a half back
exactly, no table look-up, so a loop over halves vectorizes (a gather from the 65536-entry table of
corert.kernels.f16 does not): one ``vcvtph2ps`` per 16 halves where numba compiles with F16C, else integer
operations and one multiply (``f16_value_int``), the same values for every finite half.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .simd import HALF_REBIAS, HALF_SIGN_AND_LOW, compiles_with, f32_from_bits, f32_from_half


@njit(cache=True, inline="always")
def f16_bits(u):
    """uint32 bits of an f32 -> uint16 bits of the nearest f16, ties to even (numpy's ``astype(float16)``;
    NaN becomes the quiet NaN)."""
    u = np.int64(u)
    sign = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    if a >= 0x7F800000:  # inf or NaN
        h = 0x7C00 if a == 0x7F800000 else 0x7E00
    elif a >= 0x477FF000:  # 65520 and up round past the largest f16 (65504)
        h = 0x7C00
    elif a >= 0x38800000:  # normal: rebias the exponent (127 -> 15), drop 13 mantissa bits rounding to even
        h = (a - 0x38000000 + 0xFFF + ((a >> 13) & 1)) >> 13
    else:  # subnormal or zero: the value in units of 2^-24, rounded to even
        e = a >> 23
        if e < 102:  # below 2^-25: rounds to 0
            h = 0
        else:
            m = (a & 0x7FFFFF) | 0x800000
            shift = 126 - e  # 14..24
            h = (m + (1 << (shift - 1)) - 1 + ((m >> shift) & 1)) >> shift
    return np.uint16(sign | h)


_SIGN_AND_LOW = np.int32(HALF_SIGN_AND_LOW)
_REBIAS = np.float32(HALF_REBIAS)


@njit(cache=True, inline="always")
def f16_value_int(h):
    """The f32 value of half bits ``h`` (uint16), exact for zeros, subnormals and normals.  The half's sign,
    exponent and mantissa moved 13 bits up (sign-extended, then the three bits above the exponent cleared)
    are an f32 of the half's value times 2^-112, its subnormals landing on f32 normals; the multiply rebiases.
    An infinity or NaN reads back as a finite value of 2^16 or more (the KV writes never store one for
    finite input below 65520)."""
    bits = (np.int32(np.int16(h)) << np.int32(13)) & _SIGN_AND_LOW
    return f32_from_bits(bits) * _REBIAS


@njit(cache=True, inline="always")
def _f16_value_f16c(h):
    return f32_from_half(h)


#: f16_value_int's shifts, mask and multiply were ~4 instructions per 16 halves in attention's inner loops,
#: where the conversion is 1 (its infinities and NaNs stay so; the KV writes store none)
f16_value = _f16_value_f16c if compiles_with("f16c") else f16_value_int
