"""e^x in f32 arithmetic that LLVM vectorizes, for numba kernels (inlined where it is called).

libm's expf is a call per value: SwiGLU over 8 rows of 1536 took 47 us, a tenth of a batched decode step,
and the softmax of attention called it once per score.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .simd import (add_f32, add_i32, bits_f32, f32_from_bits, floor_f32, max_f32, min_f32, mul_f32, mul_i32,
                   splat_f32, splat_i32, sub_f32, to_i32)

#: 2^f = sum(c_k f^k) on [-1/2, 1/2]: the Taylor terms (ln 2)^k / k!, degree 7 (relative error < 1e-8)
_POW2 = (1.0, 0.6931471805599453, 0.2402265069591007, 0.05550410866482158, 0.009618129107628477,
         0.0013333558146428443, 0.00015403530393381608, 1.525273380405984e-05)


@njit(inline="always")
def exp_f32(x):
    """e^x: 2^k by building the float's exponent bits, 2^f by a polynomial.  k is clamped to [-127, 128],
    whose bit patterns are 0.0 and +inf: under- and overflow come out as libm's."""
    y = min(max(x * np.float32(1.4426950408889634), np.float32(-127.0)), np.float32(128.0))
    k = np.floor(y + np.float32(0.5))
    f = y - k
    c0, c1, c2, c3, c4, c5, c6, c7 = _POW2
    p = ((((((np.float32(c7) * f + np.float32(c6)) * f + np.float32(c5)) * f + np.float32(c4)) * f
            + np.float32(c3)) * f + np.float32(c2)) * f + np.float32(c1)) * f + np.float32(c0)
    return p * f32_from_bits((np.int32(k) + np.int32(127)) << np.int32(23))


@njit(inline="always")
def exp_f32x16(x):
    """exp_f32 on 16 lanes, operation for operation (the same bits as the scalar form: no fused
    multiply-adds there either)."""
    y = min_f32(max_f32(mul_f32(x, splat_f32(np.float32(1.4426950408889634))), splat_f32(np.float32(-127.0))),
                splat_f32(np.float32(128.0)))
    k = floor_f32(add_f32(y, splat_f32(np.float32(0.5))))
    f = sub_f32(y, k)
    c0, c1, c2, c3, c4, c5, c6, c7 = _POW2
    p = splat_f32(np.float32(c7))
    for c in (c6, c5, c4, c3, c2, c1, c0):
        p = add_f32(mul_f32(p, f), splat_f32(np.float32(c)))
    return mul_f32(p, bits_f32(mul_i32(add_i32(to_i32(k), splat_i32(127)), splat_i32(1 << 23))))
