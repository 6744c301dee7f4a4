"""Write kernels (numba): one call per layer puts every row's K and V into its (page, slot).

A row's page is found in the kernel (``table[seq, pos // page_tokens]``), and for q8 pages the coding of
q8.py (centre, weight, rotate), the quantization and the stores are one pass over the row, so a write costs
one dispatch instead of a dozen numpy calls (at decode sizes those calls were the whole cost).  No fastmath:
what is stored is exactly what the numpy reference (``Q8Coding.keys`` / ``values`` + ``quantize_q8``)
computes, for every row alike.
"""
from __future__ import annotations

import numpy as np
from numba import njit, uint64

from corert.kernels.half import f16_bits
from corert.kernels.simd import prefetch

from .rotation import rotate_vec

QB = 32  # values per q8 block (one f16 scale each), as llama.cpp's q8_0


def quantize_q8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy reference of the q8 write: (rows, heads, d) f32 -> int8 values and f16-bit scales (rows, heads,
    d // QB), round to nearest.  The scale is rounded to f16 first and the values are quantized with that
    rounded scale, so what is stored decodes to the closest representable value."""
    rows, heads, d = x.shape
    b = x.reshape(rows, heads, d // QB, QB)
    amax = np.abs(b).max(axis=-1)
    d16 = (amax / 127.0).astype(np.float16)
    inv = np.divide(1.0, d16.astype(np.float32), out=np.zeros_like(amax), where=d16 > 0)
    q = np.clip(np.rint(b * inv[..., None]), -127, 127).astype(np.int8)
    return q.reshape(rows, heads, d), d16.view(np.uint16)


@njit(cache=True, boundscheck=False)
def _quantize_into(x, q, sc, scale_f32, scale_bits, tab):
    """x (d,) f32 -> q (d,) int8 and sc (d // QB,) f16 bits, as :func:`quantize_q8`.  scale_f32 is a 1-value
    f32 scratch and scale_bits its uint32 view (numba has no scalar bit cast)."""
    for b in range(sc.shape[0]):
        o = uint64(b * QB)
        amax = np.float32(0.0)
        for j in range(uint64(QB)):
            amax = max(amax, abs(x[o + j]))
        scale_f32[0] = amax / np.float32(127.0)
        bits = f16_bits(scale_bits[0])
        sc[b] = bits
        d = tab[bits]
        inv = np.float32(1.0) / d if d > 0 else np.float32(0.0)
        for j in range(uint64(QB)):
            q[o + j] = np.int8(min(max(np.rint(x[o + j] * inv), np.float32(-127.0)), np.float32(127.0)))


@njit(cache=True, boundscheck=False)
def write_q8(k, v, kp, ks, vp, vs, mu, w, sink_key, block, tab, table, page_tokens, seq_ids, positions):
    """Rows' keys and values (rows, kv_heads, d) f32 into one layer's q8 pages kp/vp (n_pages, kv_heads,
    page_tokens, d) int8 and scales ks/vs (..., d // QB) f16 bits.  Keys are stored as H(w * (k - mu)),
    position 0's against sink_key instead of mu; values as H v (mu, w, sink_key: (kv_heads, d), q8.py).
    ``tab``: f16 bits -> f32."""
    n, n_kv, hd = k.shape
    x = np.empty(hd, np.float32)
    tmp = np.empty(hd, np.float32)
    scale_f32 = np.empty(1, np.float32)
    scale_bits = scale_f32.view(np.uint32)
    P, nb = page_tokens, ks.shape[3]
    # The destination rows are cold after a layer's weights: ask for all their lines at once rather than
    # wait on each row's stores in turn (measured: 14.5 -> 10.5 us a layer for 8 decode rows).
    for i in range(n):
        pos = positions[i]
        pg, sl = table[seq_ids[i], pos // P], pos % P
        for h in range(n_kv):
            r = (pg * n_kv + h) * P + sl
            for o in range(0, hd, 64):  # int8: a byte per value
                prefetch(kp, r * hd + o)
                prefetch(vp, r * hd + o)
            prefetch(ks, r * nb)
            prefetch(vs, r * nb)
    for i in range(n):
        pos = positions[i]
        pg, sl = table[seq_ids[i], pos // page_tokens], pos % page_tokens
        for h in range(n_kv):
            base = sink_key[h] if pos == 0 else mu[h]
            wh = w[h]
            for d in range(hd):
                x[d] = (k[i, h, d] - base[d]) * wh[d]
            rotate_vec(x, tmp, block)
            _quantize_into(x, kp[pg, h, sl], ks[pg, h, sl], scale_f32, scale_bits, tab)
            for d in range(hd):
                x[d] = v[i, h, d]
            rotate_vec(x, tmp, block)
            _quantize_into(x, vp[pg, h, sl], vs[pg, h, sl], scale_f32, scale_bits, tab)


@njit(cache=True, boundscheck=False)
def write_f16(k_bits, v_bits, kp, vp, table, page_tokens, seq_ids, positions):
    """Rows' keys and values, given as the uint32 bits of f32 (rows, kv_heads, d), into one layer's f16
    pages (n_pages, kv_heads, page_tokens, d) uint16."""
    n, n_kv, hd = k_bits.shape
    for i in range(n):
        pos = positions[i]
        pg, sl = table[seq_ids[i], pos // page_tokens], pos % page_tokens
        for h in range(n_kv):
            ko, vo = kp[pg, h, sl], vp[pg, h, sl]
            for d in range(hd):
                ko[d] = f16_bits(k_bits[i, h, d])
                vo[d] = f16_bits(v_bits[i, h, d])


@njit(cache=True, boundscheck=False)
def write_f32(k, v, kp, vp, table, page_tokens, seq_ids, positions):
    """Rows' keys and values (rows, kv_heads, d) into one layer's f32 pages (n_pages, kv_heads, page_tokens,
    d)."""
    n, n_kv, hd = k.shape
    for i in range(n):
        pos = positions[i]
        pg, sl = table[seq_ids[i], pos // page_tokens], pos % page_tokens
        for h in range(n_kv):
            ko, vo = kp[pg, h, sl], vp[pg, h, sl]
            for d in range(hd):
                ko[d] = k[i, h, d]
                vo[d] = v[i, h, d]
