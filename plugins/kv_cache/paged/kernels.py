"""Paged attention kernels (numba): K/V live in fixed-size pages of one pool, found through a page table.

Layout of one layer's pool (the store keeps all layers in one array and passes ``pool[layer]``):
  data   (n_pages, n_kv_heads, page_tokens, head_dim)   f32 | f16 bits (uint16) | int8
  scales (n_pages, n_kv_heads, page_tokens, head_dim // QB)   f16 bits (uint16), q8 only
A sequence's position t sits in page ``table[seq, t // page_tokens]`` at slot ``t % page_tokens``.
Pages are dequantized inside the kernel (f16 bits through a 65536-entry table, q8 as int8 x block scale):
no f32 copy of the cache exists anywhere.  q8 pages hold keys and values in a rotated, smoothed basis (see
q8.py); the q8 kernels take queries in that basis and return outputs in it, and add ``sink[kv_head] . q`` to
the score of position 0, whose key is stored relative to a calibrated reference.

Every (row, query head) pair is computed on its own by the same code, so a row's output depends only on its
query and its own sequence's K/V (the KVStore contract that makes batching and verification exact).

Variants (a dispatch table, chosen once per store):
  wide    fastmath, unsigned indices, run-time block bounds: LLVM vectorizes the head_dim loops (ymm on
          avx2, q registers on neon)
  scalar  strictly ordered sums, no fastmath: the reference the wide kernels are tested against
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, uint64

from corert.engines.native import numba_setup  # noqa: F401  (threading layer before the first prange)

QB = 32  # values per q8 block (one f16 scale each), as llama.cpp's q8_0


# -- writes: rows' K or V into their (page, slot); quantization happens before, in numpy ----------------
@njit(cache=True, boundscheck=False)
def scatter(pool, pages, slots, x):
    """``pool[pages[i], :, slots[i], :] = x[i]``; pool (n_pages, kv_heads, page_tokens, d), x (rows, kv_heads,
    d) of the pool's dtype (works for data and scales alike)."""
    for i in range(x.shape[0]):
        p, s = pages[i], slots[i]
        for h in range(x.shape[1]):
            for d in range(x.shape[2]):
                pool[p, h, s, d] = x[i, h, d]


def quantize_q8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, heads, d) f32 -> int8 values and f16-bit scales (rows, heads, d // QB), round to nearest.
    The scale is rounded to f16 first and the values are quantized with that rounded scale, so what is
    stored decodes to the closest representable value."""
    rows, heads, d = x.shape
    b = x.reshape(rows, heads, d // QB, QB)
    amax = np.abs(b).max(axis=-1)
    d16 = (amax / 127.0).astype(np.float16)
    inv = np.divide(1.0, d16.astype(np.float32), out=np.zeros_like(amax), where=d16 > 0)
    q = np.clip(np.rint(b * inv[..., None]), -127, 127).astype(np.int8)
    return q.reshape(rows, heads, d), d16.view(np.uint16)


# -- rotation: a normalized fast Walsh-Hadamard transform (orthogonal and its own inverse) ----------------
def rotation_block(head_dim: int) -> int:
    """Values the rotation mixes: the largest power of two dividing head_dim (64 for head_dim 64)."""
    return head_dim & -head_dim


@njit(cache=True, boundscheck=False)
def rotate(x, block):
    """In place, every ``block`` values of the last axis of x (rows, heads, d): x <- H x / sqrt(block).
    Strictly ordered f32 butterflies, the same for every row, so a row's result never depends on the batch."""
    norm = np.float32(1.0 / np.sqrt(block))
    for i in range(x.shape[0]):
        for h in range(x.shape[1]):
            v = x[i, h]
            for b0 in range(0, v.shape[0], block):
                span = 1
                while span < block:
                    for j in range(b0, b0 + block, 2 * span):
                        for d in range(j, j + span):
                            a, c = v[d], v[d + span]
                            v[d], v[d + span] = a + c, a - c
                    span *= 2
                for d in range(b0, b0 + block):
                    v[d] *= norm


# -- softmax over a score row (shared) -------------------------------------------------------------------
@njit(cache=True, inline="always")
def _exp_normalize(scores, m):
    total = np.float32(0.0)
    for t in range(scores.shape[0]):
        e = np.exp(scores[t] - m)
        scores[t] = e
        total += e
    return total


# -- scalar reference ------------------------------------------------------------------------------------
@njit(cache=True, boundscheck=False)
def _dot_f32_s(q, k, tab):
    s = np.float32(0.0)
    for d in range(q.shape[0]):
        s += q[d] * k[d]
    return s


@njit(cache=True, boundscheck=False)
def _axpy_f32_s(o, w, v, tab):
    for d in range(o.shape[0]):
        o[d] += w * v[d]


@njit(cache=True, boundscheck=False)
def _dot_f16_s(q, k, tab):
    s = np.float32(0.0)
    for d in range(q.shape[0]):
        s += q[d] * tab[k[d]]
    return s


@njit(cache=True, boundscheck=False)
def _axpy_f16_s(o, w, v, tab):
    for d in range(o.shape[0]):
        o[d] += w * tab[v[d]]


@njit(cache=True, boundscheck=False)
def _dot_q8_s(q, k, ks, tab):
    s = np.float32(0.0)
    for b in range(ks.shape[0]):
        t = np.float32(0.0)
        for d in range(b * QB, b * QB + QB):
            t += q[d] * np.float32(k[d])
        s += t * tab[ks[b]]
    return s


@njit(cache=True, boundscheck=False)
def _axpy_q8_s(o, w, v, vs, tab):
    for b in range(vs.shape[0]):
        wb = w * tab[vs[b]]
        for d in range(b * QB, b * QB + QB):
            o[d] += wb * np.float32(v[d])


@njit(parallel=True, cache=True, boundscheck=False)
def attend_f32_scalar(q, kp, vp, tab, table, page_tokens, seq_ids, positions, scale, out):
    """out[i, h] = softmax(q[i, h] . K * scale) V over positions 0..positions[i] of seq_ids[i]."""
    n, n_heads, hd = q.shape
    group = n_heads // kp.shape[1]
    for job in prange(n * n_heads):
        i = job // n_heads
        h = job - i * n_heads
        s, kvh, length = seq_ids[i], h // group, positions[i] + 1
        scores = np.empty(length, np.float32)
        m = np.float32(-np.inf)
        for t in range(length):
            pg, sl = table[s, t // page_tokens], t % page_tokens
            x = _dot_f32_s(q[i, h], kp[pg, kvh, sl], tab) * scale
            scores[t] = x
            m = max(m, x)
        total = _exp_normalize(scores, m)
        o = out[i, h]
        o[:] = 0.0
        for t in range(length):
            pg, sl = table[s, t // page_tokens], t % page_tokens
            _axpy_f32_s(o, scores[t], vp[pg, kvh, sl], tab)
        inv = np.float32(1.0) / total
        for d in range(hd):
            o[d] *= inv


@njit(parallel=True, cache=True, boundscheck=False)
def attend_f16_scalar(q, kp, vp, tab, table, page_tokens, seq_ids, positions, scale, out):
    n, n_heads, hd = q.shape
    group = n_heads // kp.shape[1]
    for job in prange(n * n_heads):
        i = job // n_heads
        h = job - i * n_heads
        s, kvh, length = seq_ids[i], h // group, positions[i] + 1
        scores = np.empty(length, np.float32)
        m = np.float32(-np.inf)
        for t in range(length):
            pg, sl = table[s, t // page_tokens], t % page_tokens
            x = _dot_f16_s(q[i, h], kp[pg, kvh, sl], tab) * scale
            scores[t] = x
            m = max(m, x)
        total = _exp_normalize(scores, m)
        o = out[i, h]
        o[:] = 0.0
        for t in range(length):
            pg, sl = table[s, t // page_tokens], t % page_tokens
            _axpy_f16_s(o, scores[t], vp[pg, kvh, sl], tab)
        inv = np.float32(1.0) / total
        for d in range(hd):
            o[d] *= inv


@njit(parallel=True, cache=True, boundscheck=False)
def attend_q8_scalar(q, kp, ks, vp, vs, sink, tab, table, page_tokens, seq_ids, positions, scale, out):
    """As attend_f32_scalar over q8 pages; ``sink`` (n_kv_heads, head_dim) is what position 0's stored key
    lacks (its dot with the query is added to that score)."""
    n, n_heads, hd = q.shape
    group = n_heads // kp.shape[1]
    for job in prange(n * n_heads):
        i = job // n_heads
        h = job - i * n_heads
        s, kvh, length = seq_ids[i], h // group, positions[i] + 1
        scores = np.empty(length, np.float32)
        m = np.float32(-np.inf)
        c0 = _dot_f32_s(q[i, h], sink[kvh], tab)
        for t in range(length):
            pg, sl = table[s, t // page_tokens], t % page_tokens
            x = _dot_q8_s(q[i, h], kp[pg, kvh, sl], ks[pg, kvh, sl], tab)
            if t == 0:
                x += c0
            x *= scale
            scores[t] = x
            m = max(m, x)
        total = _exp_normalize(scores, m)
        o = out[i, h]
        o[:] = 0.0
        for t in range(length):
            pg, sl = table[s, t // page_tokens], t % page_tokens
            _axpy_q8_s(o, scores[t], vp[pg, kvh, sl], vs[pg, kvh, sl], tab)
        inv = np.float32(1.0) / total
        for d in range(hd):
            o[d] *= inv


# -- wide (vectorized) -----------------------------------------------------------------------------------
@njit(fastmath=True, cache=True, boundscheck=False)
def _dot_f32_w(q, k, hd):
    s = np.float32(0.0)
    for d in range(uint64(hd)):
        s += q[d] * k[d]
    return s


@njit(fastmath=True, cache=True, boundscheck=False)
def _axpy_f32_w(o, w, v, hd):
    for d in range(uint64(hd)):
        o[d] += w * v[d]


@njit(fastmath=True, cache=True, boundscheck=False)
def _dot_f16_w(q, k, tab, hd):
    s = np.float32(0.0)
    for d in range(uint64(hd)):
        s += q[d] * tab[k[d]]
    return s


@njit(fastmath=True, cache=True, boundscheck=False)
def _axpy_f16_w(o, w, v, tab, hd):
    for d in range(uint64(hd)):
        o[d] += w * tab[v[d]]


@njit(fastmath=True, cache=True, boundscheck=False)
def _dot_q8_w(q, k, ks, tab, bs):
    s = np.float32(0.0)
    ubs = uint64(bs)
    for b in range(ks.shape[0]):
        o = uint64(b) * ubs
        t = np.float32(0.0)
        for j in range(ubs):
            t += q[o + j] * np.float32(k[o + j])
        s += t * tab[ks[b]]
    return s


@njit(fastmath=True, cache=True, boundscheck=False)
def _axpy_q8_w(o, w, v, vs, tab, bs):
    ubs = uint64(bs)
    for b in range(vs.shape[0]):
        wb = w * tab[vs[b]]
        ob = uint64(b) * ubs
        for j in range(ubs):
            o[ob + j] += wb * np.float32(v[ob + j])


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def attend_f32_wide(q, kp, vp, tab, table, page_tokens, seq_ids, positions, scale, out):
    n, n_heads, hd = q.shape
    group = n_heads // kp.shape[1]
    for job in prange(n * n_heads):
        i = job // n_heads
        h = job - i * n_heads
        s, kvh, length = seq_ids[i], h // group, positions[i] + 1
        scores = np.empty(length, np.float32)
        m = np.float32(-np.inf)
        qi = q[i, h]
        t = 0
        for j in range(table.shape[1]):  # page by page: one table lookup per page
            if t >= length:
                break
            pg = table[s, j]
            for sl in range(min(page_tokens, length - t)):
                x = _dot_f32_w(qi, kp[pg, kvh, sl], hd) * scale
                scores[t] = x
                m = max(m, x)
                t += 1
        total = _exp_normalize(scores, m)
        o = out[i, h]
        o[:] = 0.0
        t = 0
        for j in range(table.shape[1]):
            if t >= length:
                break
            pg = table[s, j]
            for sl in range(min(page_tokens, length - t)):
                _axpy_f32_w(o, scores[t], vp[pg, kvh, sl], hd)
                t += 1
        inv = np.float32(1.0) / total
        for d in range(hd):
            o[d] *= inv


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def attend_f16_wide(q, kp, vp, tab, table, page_tokens, seq_ids, positions, scale, out):
    n, n_heads, hd = q.shape
    group = n_heads // kp.shape[1]
    for job in prange(n * n_heads):
        i = job // n_heads
        h = job - i * n_heads
        s, kvh, length = seq_ids[i], h // group, positions[i] + 1
        scores = np.empty(length, np.float32)
        m = np.float32(-np.inf)
        qi = q[i, h]
        t = 0
        for j in range(table.shape[1]):
            if t >= length:
                break
            pg = table[s, j]
            for sl in range(min(page_tokens, length - t)):
                x = _dot_f16_w(qi, kp[pg, kvh, sl], tab, hd) * scale
                scores[t] = x
                m = max(m, x)
                t += 1
        total = _exp_normalize(scores, m)
        o = out[i, h]
        o[:] = 0.0
        t = 0
        for j in range(table.shape[1]):
            if t >= length:
                break
            pg = table[s, j]
            for sl in range(min(page_tokens, length - t)):
                _axpy_f16_w(o, scores[t], vp[pg, kvh, sl], tab, hd)
                t += 1
        inv = np.float32(1.0) / total
        for d in range(hd):
            o[d] *= inv


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def attend_q8_wide(q, kp, ks, vp, vs, sink, tab, table, page_tokens, seq_ids, positions, scale, out):
    n, n_heads, hd = q.shape
    group = n_heads // kp.shape[1]
    bs = hd // ks.shape[3]
    for job in prange(n * n_heads):
        i = job // n_heads
        h = job - i * n_heads
        s, kvh, length = seq_ids[i], h // group, positions[i] + 1
        scores = np.empty(length, np.float32)
        m = np.float32(-np.inf)
        qi = q[i, h]
        c0 = _dot_f32_w(qi, sink[kvh], hd)
        t = 0
        for j in range(table.shape[1]):
            if t >= length:
                break
            pg = table[s, j]
            for sl in range(min(page_tokens, length - t)):
                x = _dot_q8_w(qi, kp[pg, kvh, sl], ks[pg, kvh, sl], tab, bs)
                if t == 0:
                    x += c0
                x *= scale
                scores[t] = x
                m = max(m, x)
                t += 1
        total = _exp_normalize(scores, m)
        o = out[i, h]
        o[:] = 0.0
        t = 0
        for j in range(table.shape[1]):
            if t >= length:
                break
            pg = table[s, j]
            for sl in range(min(page_tokens, length - t)):
                _axpy_q8_w(o, scores[t], vp[pg, kvh, sl], vs[pg, kvh, sl], tab, bs)
                t += 1
        inv = np.float32(1.0) / total
        for d in range(hd):
            o[d] *= inv


#: kernel variant -> page dtype -> attention kernel.  q8 kernels take (q, k, k_scales, v, v_scales, sink, ...),
#: the others (q, k, v, ...); the f16 table is passed to all (f32 ignores it).
ATTEND = {
    "wide": {"f32": attend_f32_wide, "f16": attend_f16_wide, "q8": attend_q8_wide},
    "scalar": {"f32": attend_f32_scalar, "f16": attend_f16_scalar, "q8": attend_q8_scalar},
}
