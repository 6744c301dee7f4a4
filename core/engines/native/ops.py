"""Row-wise numba kernels of the forward pass: RMSNorm, RoPE, SwiGLU / GELU gate, residual add.

Each works on (rows, ...) arrays and computes every row with the same code, independent of the others, so
a batch of rows gives exactly the per-row results (see matmul.py for why that matters).  They are serial on
purpose: at decode they touch a few thousand floats, less work than waking the thread pool.
"""
from __future__ import annotations

import numpy as np
from numba import njit, uint64

from ... import numba_setup  # noqa: F401
from ...kernels.simd import f32_from_bits

#: 2^f = sum(c_k f^k) on [-1/2, 1/2]: the Taylor terms (ln 2)^k / k!, degree 7 (relative error < 1e-8)
_POW2 = (1.0, 0.6931471805599453, 0.2402265069591007, 0.05550410866482158, 0.009618129107628477,
         0.0013333558146428443, 0.00015403530393381608, 1.525273380405984e-05)


@njit(cache=True)
def rmsnorm(x, w, eps, out):
    """``out = x / sqrt(mean(x^2) + eps) * w`` per row; the mean is summed in f64 like ggml's rms_norm."""
    n, d = x.shape
    for t in range(n):
        ss = 0.0
        for i in range(d):
            v = np.float64(x[t, i])
            ss += v * v
        scale = np.float32(1.0) / np.sqrt(np.float32(ss / d) + np.float32(eps))
        for i in range(d):
            out[t, i] = (x[t, i] * scale) * w[i]


def rope_tables(positions: np.ndarray, rot_dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of ``pos * base^(-2i/rot_dim)``, shape (rows, rot_dim/2), computed in f64."""
    inv = base ** (-np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim)
    ang = positions.astype(np.float64)[:, None] * inv[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


@njit(cache=True)
def rope(x, cos, sin, neox):
    """Rotate each head of ``x`` (rows, heads, head_dim) in place.  Normal (llama) style rotates adjacent
    pairs (2i, 2i+1); neox (qwen2) style rotates (i, i + rot/2)."""
    n, h, _ = x.shape
    half = cos.shape[1]
    for t in range(n):
        for k in range(h):
            for i in range(half):
                c, s = cos[t, i], sin[t, i]
                if neox:
                    a, b = i, i + half
                else:
                    a, b = 2 * i, 2 * i + 1
                x0, x1 = x[t, k, a], x[t, k, b]
                x[t, k, a] = x0 * c - x1 * s
                x[t, k, b] = x0 * s + x1 * c


@njit(inline="always")
def _exp(x):
    """e^x in f32 arithmetic that LLVM vectorizes (libm's expf is a call per value: SwiGLU over 8 rows of
    1536 took 47 us, a tenth of a batched decode step).  2^k by building the float's exponent bits, 2^f
    by a polynomial.  k is clamped to [-127, 128], whose bit patterns are 0.0 and +inf: under- and
    overflow come out as libm's."""
    y = min(max(x * np.float32(1.4426950408889634), np.float32(-127.0)), np.float32(128.0))
    k = np.floor(y + np.float32(0.5))
    f = y - k
    c0, c1, c2, c3, c4, c5, c6, c7 = _POW2
    p = ((((((np.float32(c7) * f + np.float32(c6)) * f + np.float32(c5)) * f + np.float32(c4)) * f
            + np.float32(c3)) * f + np.float32(c2)) * f + np.float32(c1)) * f + np.float32(c0)
    return p * f32_from_bits((np.int32(k) + np.int32(127)) << np.int32(23))


@njit(cache=True, boundscheck=False, error_model="numpy")  # numpy: no zero-division branch in the loop
def swiglu(gate_up, out):
    """``out = silu(gate) * up`` where ``gate_up`` holds [gate | up] per row."""
    n, f = out.shape
    for t in range(n):
        gu, o = gate_up[t], out[t]
        for i in range(uint64(f)):  # unsigned: no negative-index code, so the loop vectorizes
            g = gu[i]
            o[i] = g / (np.float32(1.0) + _exp(-g)) * gu[uint64(f) + i]


#: sqrt(2 / pi), GELU's tanh approximation
_GELU_C = 0.7978845608028654


@njit(cache=True, boundscheck=False, error_model="numpy")
def geglu(gate_up, out):
    """``out = gelu(gate) * up`` (GELU's tanh form, Gemma's) where ``gate_up`` holds [gate | up] per row.
    0.5 (1 + tanh(y)) = 1 / (1 + e^(-2y)), so it is SwiGLU's loop with another argument."""
    n, f = out.shape
    for t in range(n):
        gu, o = gate_up[t], out[t]
        for i in range(uint64(f)):
            g = gu[i]
            y = np.float32(2.0 * _GELU_C) * (g + np.float32(0.044715) * g * g * g)
            o[i] = g / (np.float32(1.0) + _exp(-y)) * gu[uint64(f) + i]


@njit(cache=True)
def add_inplace(x, y):
    """``x += y`` for 2-D arrays."""
    for t in range(x.shape[0]):
        for i in range(x.shape[1]):
            x[t, i] += y[t, i]


@njit(cache=True)
def _split(qkv, bias, q, k, v):
    """The fused Q|K|V projection rows -> q (rows, n_heads, hd), k and v (rows, n_kv_heads, hd), adding the
    bias (an empty array when the model has none)."""
    n, nh, hd = q.shape
    nkv = k.shape[1]
    has_bias = bias.shape[0] > 0
    for t in range(n):
        c = 0
        for dst, heads in ((q, nh), (k, nkv), (v, nkv)):
            for hh in range(heads):
                for i in range(hd):
                    val = qkv[t, c]
                    if has_bias:
                        val += bias[c]
                    dst[t, hh, i] = val
                    c += 1


@njit(cache=True)
def split_qkv(qkv, bias, cos, sin, neox, q, k, v):
    """Split (with the bias) and rotate q and k: one call instead of six."""
    _split(qkv, bias, q, k, v)
    rope(q, cos, sin, neox)
    rope(k, cos, sin, neox)


@njit(cache=True)
def split_qkv_normed(qkv, q_norm, k_norm, eps, cos, sin, q, k, v):
    """gemma3's split: every q and k head RMS-normed with its own weight (head_dim,), then rotated (neox)."""
    _split(qkv, np.empty(0, np.float32), q, k, v)
    q2 = q.reshape(q.shape[0] * q.shape[1], q.shape[2])
    k2 = k.reshape(k.shape[0] * k.shape[1], k.shape[2])
    rmsnorm(q2, q_norm, eps, q2)  # in place: each row's scale is taken before the row is written
    rmsnorm(k2, k_norm, eps, k2)
    rope(q, cos, sin, True)
    rope(k, cos, sin, True)


@njit(cache=True)
def add_rmsnorm(x, y, w, eps, out):
    """``x += y`` then ``out = rmsnorm(x) * w`` (the residual add and the next norm in one call)."""
    add_inplace(x, y)
    rmsnorm(x, w, eps, out)



@njit(cache=True)
def add_normed(x, y, w_post, w_next, eps, out):
    """gemma3's residual: ``x += rmsnorm(y) * w_post`` (the sublayer's own output norm, ``y`` normed in
    place), then ``out = rmsnorm(x) * w_next``."""
    rmsnorm(y, w_post, eps, y)
    add_inplace(x, y)
    rmsnorm(x, w_next, eps, out)
