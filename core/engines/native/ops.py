"""Row-wise numba kernels of the forward pass: RMSNorm, RoPE, SwiGLU / GELU gate, residual add.

Each works on (rows, ...) arrays and computes every row with the same code, independent of the others, so
a batch of rows gives exactly the per-row results (see matmul.py for why that matters).  Each has a serial
form (decode: a few thousand floats, less work than waking the thread pool) and a ``_parallel`` twin that
spreads a prompt's rows over the threads (run serially they kept one core idle for ~13% of gemma3's prompt
forward); both run the same per-row code, so they give identical results.  :data:`SERIAL` and
:data:`PARALLEL` bundle them; :func:`for_rows` picks by the number of rows.
"""
from __future__ import annotations

import attrs
import numpy as np
from numba import njit, prange, uint64

from ... import numba_setup  # noqa: F401
from ...kernels.fast_exp import exp_f32 as _exp, exp_f32x16
from ...kernels.simd import add_f32, div_f32, load_f32, mul_f32, splat_f32, store_f32


#: independent partial sums in a row's sum of squares: one chain of f64 adds is bound by the add's latency
#: (640 values: ~2,600 cycles); eight chains run side by side and LLVM packs them into one vector register
_LANES = 8


@njit(inline="always")
def _sum_squares(x):
    """sum(x^2) of a 1-D f32 array in f64 (like ggml's rms_norm), as _LANES partial sums added in a fixed
    order, so every call on the same values gives the same bits."""
    d = x.shape[0]
    head = d - d % _LANES
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    for i in range(0, head, _LANES):
        v0, v1, v2, v3 = np.float64(x[i]), np.float64(x[i + 1]), np.float64(x[i + 2]), np.float64(x[i + 3])
        v4, v5, v6, v7 = np.float64(x[i + 4]), np.float64(x[i + 5]), np.float64(x[i + 6]), np.float64(x[i + 7])
        s0, s1, s2, s3 = s0 + v0 * v0, s1 + v1 * v1, s2 + v2 * v2, s3 + v3 * v3
        s4, s5, s6, s7 = s4 + v4 * v4, s5 + v5 * v5, s6 + v6 * v6, s7 + v7 * v7
    for i in range(head, d):
        v = np.float64(x[i])
        s0 += v * v
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(inline="always")
def _rmsnorm_row(xr, w, eps, o):
    """``o = xr / sqrt(mean(xr^2) + eps) * w`` for one row (``o`` may be ``xr``: the scale is taken first)."""
    d = xr.shape[0]
    scale = np.float32(1.0) / np.sqrt(np.float32(_sum_squares(xr) / d) + np.float32(eps))
    for i in range(d):
        o[i] = (xr[i] * scale) * w[i]


@njit(cache=True)
def rmsnorm(x, w, eps, out):
    """``out = x / sqrt(mean(x^2) + eps) * w`` per row; the mean is summed in f64 like ggml's rms_norm."""
    for t in range(x.shape[0]):
        _rmsnorm_row(x[t], w, eps, out[t])


@njit(parallel=True, cache=True)
def rmsnorm_parallel(x, w, eps, out):
    for t in prange(x.shape[0]):
        _rmsnorm_row(x[t], w, eps, out[t])


def rope_tables(positions: np.ndarray, rot_dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of ``pos * base^(-2i/rot_dim)``, shape (rows, rot_dim/2), computed in f64."""
    inv = base ** (-np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim)
    ang = positions.astype(np.float64)[:, None] * inv[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


@attrs.define
class RopeTable:
    """rope_tables for positions 0.. as far as the forwards so far reached, computed once: a prompt's tables
    took ~2.3 ms of gemma3's 454-row prefill (two bases, two blocks) to recompute, a decode step ~20 us.
    A row's values are the same whatever else is computed with it (element-wise)."""

    rot_dim: int
    base: float
    cos: np.ndarray = attrs.field(init=False)
    sin: np.ndarray = attrs.field(init=False)

    #: the table grows in steps of this many positions (its size follows the context used, not n_ctx)
    STEP = 256

    def __attrs_post_init__(self) -> None:
        self.cos = self.sin = np.empty((0, self.rot_dim // 2), np.float32)

    def at(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cos, sin) of ``positions``, shape (rows, rot_dim/2)."""
        top = int(positions.max()) + 1 if positions.size else 0
        if top > self.cos.shape[0]:
            self.cos, self.sin = rope_tables(np.arange(-(-top // self.STEP) * self.STEP), self.rot_dim, self.base)
        return self.cos[positions], self.sin[positions]


@njit(inline="always")
def _rope_row(x, cos, sin, neox, t):
    """Rotate each head of row ``t`` of ``x`` (rows, heads, head_dim) in place."""
    half = cos.shape[1]
    for k in range(x.shape[1]):
        for i in range(half):
            c, s = cos[t, i], sin[t, i]
            if neox:
                a, b = i, i + half
            else:
                a, b = 2 * i, 2 * i + 1
            x0, x1 = x[t, k, a], x[t, k, b]
            x[t, k, a] = x0 * c - x1 * s
            x[t, k, b] = x0 * s + x1 * c


@njit(cache=True)
def rope(x, cos, sin, neox):
    """Rotate each head of ``x`` (rows, heads, head_dim) in place.  Normal (llama) style rotates adjacent
    pairs (2i, 2i+1); neox (qwen2) style rotates (i, i + rot/2)."""
    for t in range(x.shape[0]):
        _rope_row(x, cos, sin, neox, t)


@njit(inline="always")
def _gated16(gu, i, f, gelu):
    """_swiglu_row's / _geglu_row's values i..i+15 of a row (``gu`` flat, ``f`` its half), 16 lanes at a
    time: LLVM vectorized the scalar loops 8 lanes wide (it prefers 256-bit vectors on these CPUs)."""
    g = load_f32(gu, i)
    arg = g
    if gelu:
        c = splat_f32(np.float32(0.044715))
        arg = mul_f32(splat_f32(np.float32(2.0 * _GELU_C)), add_f32(g, mul_f32(mul_f32(mul_f32(c, g), g), g)))
    e = exp_f32x16(mul_f32(arg, splat_f32(np.float32(-1.0))))
    return mul_f32(div_f32(g, add_f32(splat_f32(np.float32(1.0)), e)), load_f32(gu, i + f))


@njit(inline="always")
def _swiglu_row(gu, o):
    f = o.shape[0]
    for i in range(uint64(f)):  # unsigned: no negative-index code, so the loop vectorizes
        g = gu[i]
        o[i] = g / (np.float32(1.0) + _exp(-g)) * gu[uint64(f) + i]


#: sqrt(2 / pi), GELU's tanh approximation
_GELU_C = 0.7978845608028654


@njit(inline="always")
def _geglu_row(gu, o):
    f = o.shape[0]
    for i in range(uint64(f)):
        g = gu[i]
        y = np.float32(2.0 * _GELU_C) * (g + np.float32(0.044715) * g * g * g)
        o[i] = g / (np.float32(1.0) + _exp(-y)) * gu[uint64(f) + i]


@njit(inline="always")
def _gated_row(gate_up, out, gelu, t):
    f = out.shape[1]
    if f % 16 == 0:
        gu, o = gate_up[t], out[t]
        for i in range(0, f, 16):
            store_f32(o, i, _gated16(gu, i, f, gelu))
    elif gelu:
        _geglu_row(gate_up[t], out[t])
    else:
        _swiglu_row(gate_up[t], out[t])


@njit(cache=True, boundscheck=False, error_model="numpy")  # numpy: no zero-division branch in the loop
def gated(gate_up, out, gelu):
    """``out = act(gate) * up`` where ``gate_up`` holds [gate | up] per row; act is SiLU, or with ``gelu``
    GELU's tanh form (Gemma's): 0.5 (1 + tanh(y)) = 1 / (1 + e^(-2y)), so it is SiLU's loop with another
    argument."""
    for t in range(out.shape[0]):
        _gated_row(gate_up, out, gelu, t)


@njit(parallel=True, cache=True, boundscheck=False, error_model="numpy")
def gated_parallel(gate_up, out, gelu):
    for t in prange(out.shape[0]):
        _gated_row(gate_up, out, gelu, t)


def swiglu(gate_up: np.ndarray, out: np.ndarray) -> None:
    """``out = silu(gate) * up``."""
    gated(gate_up, out, False)


def geglu(gate_up: np.ndarray, out: np.ndarray) -> None:
    """``out = gelu(gate) * up`` (GELU's tanh form)."""
    gated(gate_up, out, True)


@njit(cache=True)
def add_inplace(x, y):
    """``x += y`` for 2-D arrays."""
    for t in range(x.shape[0]):
        for i in range(x.shape[1]):
            x[t, i] += y[t, i]


@njit(inline="always")
def _split_row(qkv, bias, q, k, v, t):
    """Row ``t`` of the fused Q|K|V projection -> q (rows, n_heads, hd), k and v (rows, n_kv_heads, hd),
    adding the bias (an empty array when the model has none)."""
    hd = q.shape[2]
    has_bias = bias.shape[0] > 0
    c = 0
    for dst, heads in ((q, q.shape[1]), (k, k.shape[1]), (v, v.shape[1])):
        for hh in range(heads):
            for i in range(hd):
                val = qkv[t, c]
                if has_bias:
                    val += bias[c]
                dst[t, hh, i] = val
                c += 1


@njit(inline="always")
def _split_qkv_row(qkv, bias, cos, sin, neox, q, k, v, t):
    _split_row(qkv, bias, q, k, v, t)
    _rope_row(q, cos, sin, neox, t)
    _rope_row(k, cos, sin, neox, t)


@njit(cache=True)
def split_qkv(qkv, bias, cos, sin, neox, q, k, v):
    """Split (with the bias) and rotate q and k: one call instead of six."""
    for t in range(q.shape[0]):
        _split_qkv_row(qkv, bias, cos, sin, neox, q, k, v, t)


@njit(parallel=True, cache=True)
def split_qkv_parallel(qkv, bias, cos, sin, neox, q, k, v):
    for t in prange(q.shape[0]):
        _split_qkv_row(qkv, bias, cos, sin, neox, q, k, v, t)


@njit(inline="always")
def _split_qkv_normed_row(qkv, nobias, q_norm, k_norm, eps, cos, sin, q, k, v, t):
    _split_row(qkv, nobias, q, k, v, t)
    for hh in range(q.shape[1]):
        _rmsnorm_row(q[t, hh], q_norm, eps, q[t, hh])  # in place: the row's scale is taken before it is written
    for hh in range(k.shape[1]):
        _rmsnorm_row(k[t, hh], k_norm, eps, k[t, hh])
    _rope_row(q, cos, sin, True, t)
    _rope_row(k, cos, sin, True, t)


@njit(cache=True)
def split_qkv_normed(qkv, q_norm, k_norm, eps, cos, sin, q, k, v):
    """gemma3's split: every q and k head RMS-normed with its own weight (head_dim,), then rotated (neox)."""
    nobias = np.empty(0, np.float32)
    for t in range(q.shape[0]):
        _split_qkv_normed_row(qkv, nobias, q_norm, k_norm, eps, cos, sin, q, k, v, t)


@njit(parallel=True, cache=True)
def split_qkv_normed_parallel(qkv, q_norm, k_norm, eps, cos, sin, q, k, v):
    nobias = np.empty(0, np.float32)
    for t in prange(q.shape[0]):
        _split_qkv_normed_row(qkv, nobias, q_norm, k_norm, eps, cos, sin, q, k, v, t)


@njit(inline="always")
def _add_rmsnorm_row(xr, yr, w, eps, o):
    for i in range(xr.shape[0]):
        xr[i] += yr[i]
    _rmsnorm_row(xr, w, eps, o)


@njit(cache=True)
def add_rmsnorm(x, y, w, eps, out):
    """``x += y`` then ``out = rmsnorm(x) * w`` (the residual add and the next norm in one call)."""
    for t in range(x.shape[0]):
        _add_rmsnorm_row(x[t], y[t], w, eps, out[t])


@njit(parallel=True, cache=True)
def add_rmsnorm_parallel(x, y, w, eps, out):
    for t in prange(x.shape[0]):
        _add_rmsnorm_row(x[t], y[t], w, eps, out[t])


@njit(inline="always")
def _add_normed_row(xr, yr, w_post, w_next, eps, o):
    _rmsnorm_row(yr, w_post, eps, yr)
    _add_rmsnorm_row(xr, yr, w_next, eps, o)


@njit(cache=True)
def add_normed(x, y, w_post, w_next, eps, out):
    """gemma3's residual: ``x += rmsnorm(y) * w_post`` (the sublayer's own output norm, ``y`` normed in
    place), then ``out = rmsnorm(x) * w_next``."""
    for t in range(x.shape[0]):
        _add_normed_row(x[t], y[t], w_post, w_next, eps, out[t])


@njit(parallel=True, cache=True)
def add_normed_parallel(x, y, w_post, w_next, eps, out):
    for t in prange(x.shape[0]):
        _add_normed_row(x[t], y[t], w_post, w_next, eps, out[t])


@attrs.frozen
class RowOps:
    """The row-wise ops of a forward, all serial or all spread over the threads."""

    rmsnorm: object
    split_qkv: object
    split_qkv_normed: object
    add_rmsnorm: object
    add_normed: object
    gated: object  # (gate_up, out, gelu)


SERIAL = RowOps(rmsnorm, split_qkv, split_qkv_normed, add_rmsnorm, add_normed, gated)
PARALLEL = RowOps(rmsnorm_parallel, split_qkv_parallel, split_qkv_normed_parallel, add_rmsnorm_parallel,
                  add_normed_parallel, gated_parallel)
#: from this many rows on (a prompt, a large batch) the row-wise ops run on every thread (matmul_i8 quantizes
#: its activations from the same count)
PARALLEL_ROWS = 8


def for_rows(n: int) -> RowOps:
    """The ops for a forward of ``n`` rows."""
    return PARALLEL if n >= PARALLEL_ROWS else SERIAL
