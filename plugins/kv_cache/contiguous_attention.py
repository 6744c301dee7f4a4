"""Causal attention over a contiguous K/V store, numba.

Layout of one layer's store: k, v of shape (n_seqs, n_kv_heads, max_tokens, head_dim), so the keys a head
reads are contiguous.  The values are f32, or f16 bit patterns (uint16) that the kernels widen as they read
them (one ``vcvtph2ps`` per 16 halves with F16C): the same kernels, typed per store dtype.
Grouped-query attention: query head h reads KV head h // (n_heads / n_kv_heads).  Sliding-window layers
(gemma3's local ones) pass ``window`` > 0: a row at position p reads positions p - window + 1 .. p only.
Token-tree rows (``tree``, corert.tree.TreeMask.visible) read the context and their ancestors' slots only,
in path order (corert.kernels.tree_rows).

Head dimensions that are multiples of 16 (every model here) take ``_attend_tile``: a job is a tile of up to
TILE_ROWS rows of one sequence and the query heads of one KV head, so each K and V row it loads serves
every query vector of the tile (4 vectors x 4 keys a register block), in explicit 16-lane vector code
(corert.kernels.simd) whose chains and trees do not depend on the tile: a row's output is the same bits in
any batch, tile or thread split, and for either store dtype over the same values.  A 454-row prompt's
attention layer on gemma3 (4 heads of 256 on one KV head) took 2.1 ms where the per-(row, group) kernel
``_attend_group`` took 4.0, Qwen 0.5B's (7 heads of 64 a KV head, where that kernel's per-key horizontal
sums weighed most) 2.7 for 6.0; ``_attend_group`` remains for other head dimensions.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from corert import numba_setup  # noqa: F401
from corert.kernels.fast_exp import exp_f32
from corert.kernels.half import f16_bits, f16_value
from corert.kernels.simd import (add_f32, hmax_f32, lane_f32, load_f32, max_f32, mul_f32, muladd_f32, splat_f32,
                                 store_f32, sums4_f32)
from corert.kernels.tree_rows import balanced_row, row_span, sequence_tiles, slot_of
from corert.tree import NO_TREE


def _kv(x):
    """A stored K or V value as f32 (typed per store dtype below)."""


@overload(_kv)
def _kv_of(x):
    if x == types.uint16:
        return lambda x: f16_value(x)
    return lambda x: x


@njit(fastmath=True, cache=True, inline="always")
def _dot(a, b):
    s = np.float32(0.0)
    for i in range(a.shape[0]):
        s += a[i] * _kv(b[i])
    return s


@njit(fastmath=True, cache=True, inline="always")
def _dot4(q, k0, k1, k2, k3):
    """q . k0 .. q . k3 in one pass: each q value is loaded once for four keys."""
    s0 = s1 = s2 = s3 = np.float32(0.0)
    for d in range(q.shape[0]):
        qd = q[d]
        s0 += qd * _kv(k0[d])
        s1 += qd * _kv(k1[d])
        s2 += qd * _kv(k2[d])
        s3 += qd * _kv(k3[d])
    return s0, s1, s2, s3


@njit(fastmath=True, cache=True, inline="always")
def _dot4x2(qa, qb, k0, k1, k2, k3):
    """_dot4 for two query heads at once: each key value loaded once for both."""
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0.0)
    for d in range(qa.shape[0]):
        x, y = qa[d], qb[d]
        u0, u1, u2, u3 = _kv(k0[d]), _kv(k1[d]), _kv(k2[d]), _kv(k3[d])
        a0 += x * u0
        a1 += x * u1
        a2 += x * u2
        a3 += x * u3
        b0 += y * u0
        b1 += y * u1
        b2 += y * u2
        b3 += y * u3
    return a0, a1, a2, a3, b0, b1, b2, b3


@njit(cache=True)
def write_contiguous(k_store, v_store, seq_ids, positions, k, v):
    """Rows' K and V (rows, n_kv_heads, head_dim) into one layer's f32 store (n_seqs, n_kv_heads, max_tokens,
    head_dim)."""
    for i in range(k.shape[0]):
        s, p = seq_ids[i], positions[i]
        for h in range(k.shape[1]):
            k_store[s, h, p, :] = k[i, h]
            v_store[s, h, p, :] = v[i, h]


@njit(cache=True)
def write_contiguous_f16(k_store, v_store, seq_ids, positions, k_bits, v_bits):
    """write_contiguous into an f16 store (uint16), the rows given as the uint32 bits of their f32 values
    (numba has no scalar bit cast), each rounded to the nearest half."""
    for i in range(k_bits.shape[0]):
        s, p = seq_ids[i], positions[i]
        for h in range(k_bits.shape[1]):
            ko, vo = k_store[s, h, p], v_store[s, h, p]
            for d in range(k_bits.shape[2]):
                ko[d] = f16_bits(k_bits[i, h, d])
                vo[d] = f16_bits(v_bits[i, h, d])


#: keys a head's loops take at a time: a q value is loaded once per four dot products, and an output value
#: is loaded and stored once per four weighted values (one key at a time, the loads and stores of ``o`` and
#: ``q`` bound the loops: a 450-token prompt's attention took 12.4 ms a gemma3 layer, then ~8)
_KEYS = 4


@njit(fastmath=True, cache=True)
def _attend_group(q, k, v, tree, i, h0, h1, lo, ctx, scale, out, scores):
    """``out[i, h] = softmax(q[i, h] . k * scale) @ v`` for the query heads h0..h1-1 that read one KV head
    (k, v: its (max_tokens, head_dim) for row i's sequence), over row i's visible positions
    lo..lo+scores.shape[1]-2; ``ctx``: where its context ends (tree_rows); ``scores``: (heads, positions + 1)
    scratch, the last column for each head's softmax sum.  The heads take each key and value row in turn
    while it is in L1 (one head at a time, each head read them again: gemma3's 4 heads per KV head at 450
    rows, 9.2 -> 6.2 ms a layer in a one-thread microbenchmark), two heads at a time while each value is in
    a register (6.0 -> 4.3 ms).  A head's instructions depend only on its place in its group (paired, or
    the odd one out), so how the heads are split over jobs never changes a result."""
    length = scores.shape[1] - 1
    hd = q.shape[2]
    nh = h1 - h0
    pairs = nh - nh % 2  # heads h0, h0 + 1, ... go two by two: a split of the group keeps them paired
    whole = length - length % _KEYS
    for t in range(0, whole, _KEYS):
        k0, k1 = k[slot_of(tree, i, ctx, lo + t)], k[slot_of(tree, i, ctx, lo + t + 1)]
        k2, k3 = k[slot_of(tree, i, ctx, lo + t + 2)], k[slot_of(tree, i, ctx, lo + t + 3)]
        for g in range(0, pairs, 2):
            a0, a1, a2, a3, b0, b1, b2, b3 = _dot4x2(q[i, h0 + g], q[i, h0 + g + 1], k0, k1, k2, k3)
            scores[g, t], scores[g, t + 1], scores[g, t + 2], scores[g, t + 3] = \
                a0 * scale, a1 * scale, a2 * scale, a3 * scale
            scores[g + 1, t], scores[g + 1, t + 1], scores[g + 1, t + 2], scores[g + 1, t + 3] = \
                b0 * scale, b1 * scale, b2 * scale, b3 * scale
        for g in range(pairs, nh):
            a, b, c, d = _dot4(q[i, h0 + g], k0, k1, k2, k3)
            scores[g, t], scores[g, t + 1], scores[g, t + 2], scores[g, t + 3] = \
                a * scale, b * scale, c * scale, d * scale
    for t in range(whole, length):
        kt = k[slot_of(tree, i, ctx, lo + t)]
        for g in range(nh):
            scores[g, t] = _dot(q[i, h0 + g], kt) * scale
    for g in range(nh):
        m = np.float32(-np.inf)
        for t in range(length):
            m = max(m, scores[g, t])
        total = np.float32(0.0)
        for t in range(length):
            e = exp_f32(scores[g, t] - m)
            scores[g, t] = e
            total += e
        scores[g, length] = total
        out[i, h0 + g, :] = 0.0
    for t in range(0, whole, _KEYS):
        v0, v1 = v[slot_of(tree, i, ctx, lo + t)], v[slot_of(tree, i, ctx, lo + t + 1)]
        v2, v3 = v[slot_of(tree, i, ctx, lo + t + 2)], v[slot_of(tree, i, ctx, lo + t + 3)]
        for g in range(0, pairs, 2):
            w0, w1, w2, w3 = scores[g, t], scores[g, t + 1], scores[g, t + 2], scores[g, t + 3]
            x0, x1, x2, x3 = scores[g + 1, t], scores[g + 1, t + 1], scores[g + 1, t + 2], scores[g + 1, t + 3]
            oa, ob = out[i, h0 + g], out[i, h0 + g + 1]
            for d in range(hd):
                p0, p1, p2, p3 = _kv(v0[d]), _kv(v1[d]), _kv(v2[d]), _kv(v3[d])
                oa[d] += (w0 * p0 + w1 * p1) + (w2 * p2 + w3 * p3)
                ob[d] += (x0 * p0 + x1 * p1) + (x2 * p2 + x3 * p3)
        for g in range(pairs, nh):
            w0, w1, w2, w3 = scores[g, t], scores[g, t + 1], scores[g, t + 2], scores[g, t + 3]
            o = out[i, h0 + g]
            for d in range(hd):
                o[d] += (w0 * _kv(v0[d]) + w1 * _kv(v1[d])) + (w2 * _kv(v2[d]) + w3 * _kv(v3[d]))
    for t in range(whole, length):
        vt = v[slot_of(tree, i, ctx, lo + t)]
        for g in range(nh):
            w = scores[g, t]
            o = out[i, h0 + g]
            for d in range(hd):
                o[d] += w * _kv(vt[d])
    for g in range(nh):
        inv = np.float32(1.0) / scores[g, length]
        o = out[i, h0 + g]
        for d in range(hd):
            o[d] *= inv


@njit(cache=True, inline="always")
def window_start(p, window):
    """The first position a row at position ``p`` reads (0 without a window)."""
    return max(0, p + 1 - window) if window > 0 else 0


@njit(inline="always")
def _attend_job(q, k, v, seq_ids, positions, scale, window, tree, out, i, kvh, h0, h1):
    ctx, end = row_span(tree, i, positions[i])
    lo = window_start(end - 1, window)
    s = seq_ids[i]
    _attend_group(q, k[s, kvh], v[s, kvh], tree, i, h0, h1, lo, ctx, scale, out,
                  np.empty((h1 - h0, end - lo + 1), np.float32))


#: rows of one sequence that a job's query heads take together: each K and V row a job loads serves all its
#: rows' heads while it is in L1
TILE_ROWS = 4


@njit(inline="always")
def _mac4(x, y0, y1, y2, y3, a0, a1, a2, a3):
    """a_j + x * y_j for 4 accumulators (muladd_f32)."""
    return muladd_f32(x, y0, a0), muladd_f32(x, y1, a1), muladd_f32(x, y2, a2), muladd_f32(x, y3, a3)


@njit(inline="always")
def _load4(arr, o0, o1, o2, o3):
    return load_f32(arr, o0), load_f32(arr, o1), load_f32(arr, o2), load_f32(arr, o3)


@njit(inline="always")
def _score_block(q, qo0, qo1, qo2, qo3, k, ko0, ko1, ko2, ko3, n_chunks):
    """The dot products of 4 query vectors (flat offsets ``qo*`` into q) with 4 keys (``ko*`` into k),
    16 dimensions a step: each loaded value serves 4 multiply-adds.  Returns one vector a query, its 4
    keys' sums in lanes 0, 4, 8, 12 (sums4_f32: one query's dot product with one key is the same chain of
    lanes and the same tree in any block)."""
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = c0 = c1 = c2 = c3 = d0 = d1 = d2 = d3 = splat_f32(np.float32(0.0))
    for ch in range(n_chunks):
        o = ch * 16
        k0, k1, k2, k3 = _load4(k, ko0 + o, ko1 + o, ko2 + o, ko3 + o)
        a0, a1, a2, a3 = _mac4(load_f32(q, qo0 + o), k0, k1, k2, k3, a0, a1, a2, a3)
        b0, b1, b2, b3 = _mac4(load_f32(q, qo1 + o), k0, k1, k2, k3, b0, b1, b2, b3)
        c0, c1, c2, c3 = _mac4(load_f32(q, qo2 + o), k0, k1, k2, k3, c0, c1, c2, c3)
        d0, d1, d2, d3 = _mac4(load_f32(q, qo3 + o), k0, k1, k2, k3, d0, d1, d2, d3)
    return sums4_f32(a0, a1, a2, a3), sums4_f32(b0, b1, b2, b3), sums4_f32(c0, c1, c2, c3), sums4_f32(d0, d1, d2, d3)


@njit(inline="always")
def _score_block2(q, qo0, qo1, k, ko0, ko1, ko2, ko3, n_chunks):
    """_score_block for 2 query vectors (a decode row's heads split over the threads)."""
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = splat_f32(np.float32(0.0))
    for ch in range(n_chunks):
        o = ch * 16
        k0, k1, k2, k3 = _load4(k, ko0 + o, ko1 + o, ko2 + o, ko3 + o)
        a0, a1, a2, a3 = _mac4(load_f32(q, qo0 + o), k0, k1, k2, k3, a0, a1, a2, a3)
        b0, b1, b2, b3 = _mac4(load_f32(q, qo1 + o), k0, k1, k2, k3, b0, b1, b2, b3)
    return sums4_f32(a0, a1, a2, a3), sums4_f32(b0, b1, b2, b3)


@njit(inline="always")
def _store_scores(scores, r, col, s, scale):
    scores[r, col] = lane_f32(s, 0) * scale
    scores[r, col + 1] = lane_f32(s, 4) * scale
    scores[r, col + 2] = lane_f32(s, 8) * scale
    scores[r, col + 3] = lane_f32(s, 12) * scale


@njit(inline="always")
def _weigh_block(w, r0, r1, r2, r3, v, vo, length, oc0, oc1, oc2, oc3):
    """``sum_t w[r, t] * v[t]`` for 4 weight rows and 4 chunks of 16 dimensions (offsets ``oc*`` into a V
    row), t over 0..length-1 in order (V row t at flat offset ``vo[t]``).  Returns the 16 sums."""
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = c0 = c1 = c2 = c3 = d0 = d1 = d2 = d3 = splat_f32(np.float32(0.0))
    for t in range(length):
        o = vo[t]
        v0, v1, v2, v3 = _load4(v, o + oc0, o + oc1, o + oc2, o + oc3)
        a0, a1, a2, a3 = _mac4(splat_f32(w[r0, t]), v0, v1, v2, v3, a0, a1, a2, a3)
        b0, b1, b2, b3 = _mac4(splat_f32(w[r1, t]), v0, v1, v2, v3, b0, b1, b2, b3)
        c0, c1, c2, c3 = _mac4(splat_f32(w[r2, t]), v0, v1, v2, v3, c0, c1, c2, c3)
        d0, d1, d2, d3 = _mac4(splat_f32(w[r3, t]), v0, v1, v2, v3, d0, d1, d2, d3)
    return a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3


@njit(inline="always")
def _weigh_block2(w, r0, r1, v, vo, length, oc0, oc1, oc2, oc3):
    """_weigh_block for 2 weight rows."""
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = splat_f32(np.float32(0.0))
    for t in range(length):
        o = vo[t]
        v0, v1, v2, v3 = _load4(v, o + oc0, o + oc1, o + oc2, o + oc3)
        a0, a1, a2, a3 = _mac4(splat_f32(w[r0, t]), v0, v1, v2, v3, a0, a1, a2, a3)
        b0, b1, b2, b3 = _mac4(splat_f32(w[r1, t]), v0, v1, v2, v3, b0, b1, b2, b3)
    return a0, a1, a2, a3, b0, b1, b2, b3


@njit(inline="always")
def _store_out(out, o, oc0, oc1, oc2, oc3, inv, a0, a1, a2, a3):
    s = splat_f32(inv)
    store_f32(out, o + oc0, mul_f32(a0, s))
    store_f32(out, o + oc1, mul_f32(a1, s))
    store_f32(out, o + oc2, mul_f32(a2, s))
    store_f32(out, o + oc3, mul_f32(a3, s))


@njit(inline="always")
def _softmax_row(s, rs, re):
    """Row ``s`` of scores -> e^(s - max) over columns rs..re-1, 0 elsewhere; returns their sum.  The sum runs
    16 lanes from column rs and sums4_f32's tree, so it depends on the row's own columns only (the columns
    beyond re are 0)."""
    width = s.shape[0]
    for x in range(rs):
        s[x] = -np.inf
    for x in range(re, width):
        s[x] = -np.inf
    m = splat_f32(-np.inf)
    for x in range(0, width, 16):
        m = max_f32(m, load_f32(s, x))
    top = hmax_f32(m)
    for x in range(width):  # no fastmath here: each value is the same whether LLVM vectorizes it or not
        s[x] = exp_f32(s[x] - top)
    acc = splat_f32(np.float32(0.0))
    for x in range(rs, re, 16):
        acc = add_f32(acc, load_f32(s, x))
    return lane_f32(sums4_f32(acc, acc, acc, acc), 0)


@njit(inline="always")
def _attend_tile(q, k, v, seq_ids, positions, scale, window, tree, out, i0, i1, kvh, h0, h1):
    """Rows i0..i1-1 (one sequence; one row for a token tree) x query heads h0..h1-1 of KV head ``kvh``.
    Every query vector's scores, softmax and weighted values are lane chains and trees that do not depend
    on the other vectors of the tile, nor on the columns the tile spans beyond its row's (a weight of 0
    adds nothing), so a row's output is the same in any tile, alone or in a batch."""
    nh = h1 - h0
    nq = (i1 - i0) * nh
    hd = q.shape[2]
    n_chunks = hd // 16
    s = seq_ids[i0]
    first, last, ctx = 1 << 30, 0, 0
    for i in range(i0, i1):
        ctx, end = row_span(tree, i, positions[i])
        first = min(first, window_start(end - 1, window))
        last = max(last, end)
    if tree.shape[0] == 0:
        ctx = last
    length = last - first
    width = (length + 15) // 16 * 16 + 16
    scores = np.empty((nq, width), np.float32)  # (query vector, column t - first)
    kslot = np.empty(width, np.int64)  # flat offset of each column's K (and V) row; the padding repeats the last
    base = (s * k.shape[1] + kvh) * k.shape[2]
    for t in range(width):
        kslot[t] = (base + slot_of(tree, i0, ctx, first + min(t, length - 1))) * hd
    qrow = np.empty(nq + 3, np.int64)  # flat offset of each query vector; the padding repeats the last
    for r in range(nq + 3):
        rr = min(r, nq - 1)
        qrow[r] = ((i0 + rr // nh) * q.shape[1] + h0 + rr % nh) * hd
    for r in range(0, nq, 4):
        if nq - r <= 2:  # the last one or two: a 4-vector block would compute 2 or 3 copies
            for t in range(0, length, 4):
                sa, sb = _score_block2(q, qrow[r], qrow[r + 1], k, kslot[t], kslot[t + 1], kslot[t + 2],
                                       kslot[t + 3], n_chunks)
                _store_scores(scores, r, t, sa, scale)
                if r + 1 < nq:
                    _store_scores(scores, r + 1, t, sb, scale)
            continue
        for t in range(0, length, 4):
            sa, sb, sc, sd = _score_block(q, qrow[r], qrow[r + 1], qrow[r + 2], qrow[r + 3], k, kslot[t],
                                          kslot[t + 1], kslot[t + 2], kslot[t + 3], n_chunks)
            _store_scores(scores, r, t, sa, scale)
            if r + 1 < nq:
                _store_scores(scores, r + 1, t, sb, scale)
            if r + 2 < nq:
                _store_scores(scores, r + 2, t, sc, scale)
            if r + 3 < nq:
                _store_scores(scores, r + 3, t, sd, scale)
    inv = np.empty(nq + 3, np.float32)
    for r in range(nq):
        i = i0 + r // nh
        _, end = row_span(tree, i, positions[i])
        inv[r] = np.float32(1.0) / _softmax_row(scores[r], window_start(end - 1, window) - first, end - first)
    for r in range(nq, nq + 3):
        inv[r] = inv[nq - 1]
    last_chunk = (n_chunks - 1) * 16
    for r in range(0, nq, 4):
        r1, r2, r3 = min(r + 1, nq - 1), min(r + 2, nq - 1), min(r + 3, nq - 1)
        for c in range(0, hd, 64):
            oc0, oc1, oc2, oc3 = c, min(c + 16, last_chunk), min(c + 32, last_chunk), min(c + 48, last_chunk)
            if nq - r <= 2:
                a = _weigh_block2(scores, r, r1, v, kslot, length, oc0, oc1, oc2, oc3)
                _store_out(out, qrow[r], oc0, oc1, oc2, oc3, inv[r], a[0], a[1], a[2], a[3])
                _store_out(out, qrow[r + 1], oc0, oc1, oc2, oc3, inv[r + 1], a[4], a[5], a[6], a[7])
                continue
            acc = _weigh_block(scores, r, r1, r2, r3, v, kslot, length, oc0, oc1, oc2, oc3)
            _store_out(out, qrow[r], oc0, oc1, oc2, oc3, inv[r], acc[0], acc[1], acc[2], acc[3])
            _store_out(out, qrow[r + 1], oc0, oc1, oc2, oc3, inv[r + 1], acc[4], acc[5], acc[6], acc[7])
            _store_out(out, qrow[r + 2], oc0, oc1, oc2, oc3, inv[r + 2], acc[8], acc[9], acc[10], acc[11])
            _store_out(out, qrow[r + 3], oc0, oc1, oc2, oc3, inv[r + 3], acc[12], acc[13], acc[14], acc[15])


@njit(parallel=True, cache=True)
def _attend_tiles_parallel(q, k, v, seq_ids, positions, scale, window, tree, out, tiles, parts):
    """Jobs of (tile of rows, KV head, one of ``parts`` slices of its query heads) over the threads, the tiles
    in balanced_row's order."""
    n_tiles = tiles.shape[0] - 1
    n_kv = k.shape[1]
    group = q.shape[1] // n_kv
    per = (group + parts - 1) // parts
    for job in prange(n_tiles * n_kv * parts):
        j = balanced_row(job // (n_kv * parts), n_tiles)
        kvh = (job // parts) % n_kv
        h0 = kvh * group + (job % parts) * per
        h1 = min(h0 + per, (kvh + 1) * group)
        if h0 < h1:
            _attend_tile(q, k, v, seq_ids, positions, scale, window, tree, out, tiles[j], tiles[j + 1], kvh, h0, h1)


@njit(cache=True)
def _attend_tiles_serial(q, k, v, seq_ids, positions, scale, window, tree, out, tiles):
    n_kv = k.shape[1]
    group = q.shape[1] // n_kv
    for j in range(tiles.shape[0] - 1):
        for kvh in range(n_kv):
            _attend_tile(q, k, v, seq_ids, positions, scale, window, tree, out, tiles[j], tiles[j + 1], kvh,
                         kvh * group, (kvh + 1) * group)


@njit(parallel=True, cache=True)
def _attend_parallel(q, k, v, seq_ids, positions, scale, window, tree, out, parts):
    """Jobs of (row, KV head, one of ``parts`` slices of its query heads) over the threads, the rows in
    balanced_row's order."""
    n, n_heads, _ = q.shape
    n_kv = k.shape[1]
    group = n_heads // n_kv
    per = (group + parts - 1) // parts
    per += per % 2  # an even slice: its heads pair as they do in the whole group (see _attend_group)
    for job in prange(n * n_kv * parts):
        i = balanced_row(job // (n_kv * parts), n)  # a causal row's cost grows with it: first and last paired
        kvh = (job // parts) % n_kv
        h0 = kvh * group + (job % parts) * per
        h1 = min(h0 + per, (kvh + 1) * group)
        if h0 < h1:
            _attend_job(q, k, v, seq_ids, positions, scale, window, tree, out, i, kvh, h0, h1)


@njit(cache=True)
def _attend_serial(q, k, v, seq_ids, positions, scale, window, tree, out):
    n, n_heads, _ = q.shape
    n_kv = k.shape[1]
    group = n_heads // n_kv
    for i in range(n):
        for kvh in range(n_kv):
            _attend_job(q, k, v, seq_ids, positions, scale, window, tree, out, i, kvh, kvh * group,
                        (kvh + 1) * group)


#: below this many query-key products a forward's attention runs on the calling thread: waking the pool
#: costs more than the work (decode over a short context)
PARALLEL_MIN_WORK = 1 << 16


def attend_contiguous(q, k, v, seq_ids, positions, scale, out, window=0, tree=NO_TREE):
    """``out[i, h] = softmax(q[i, h] . K[:p+1] * scale) @ V[:p+1]`` with p = positions[i], for the K/V of
    sequence seq_ids[i] (a tree row: over its context and ancestors).  q, out: (rows, n_heads, head_dim).
    Serial or parallel over (tile of rows, KV head) by the amount of work; both run the same tile kernel, so
    a row's output never depends on which.  Arrays that are not C-contiguous go through C copies: the tiles
    read and write flat offsets, and each kernel has one compiled form."""
    if not (q.flags.c_contiguous and out.flags.c_contiguous):
        dense = np.empty(out.shape, np.float32)
        attend_contiguous(np.ascontiguousarray(q), k, v, seq_ids, positions, scale, dense, window, tree)
        out[...] = dense
        return
    if tree.shape[0] == 0 and positions.shape[0] == 1:  # a decode step: its span without array arithmetic
        reach = int(positions[0]) + 1
        span = min(reach, window) if window > 0 else reach
    else:
        reach = positions + 1 if tree.shape[0] == 0 else tree[:, 0] + (tree[:, 1:] >= 0).sum(axis=1)
        span = int((reach if window <= 0 else np.minimum(reach, window)).sum())
    work = q.shape[1] * span * q.shape[2]
    if q.shape[2] % 16:  # the tiles' vectors are 16 dimensions wide
        if work < PARALLEL_MIN_WORK:
            _attend_serial(q, k, v, seq_ids, positions, scale, int(window), tree, out)
            return
        parts = head_parts(q.shape[0], k.shape[1], q.shape[1] // k.shape[1], numba.get_num_threads())
        _attend_parallel(q, k, v, seq_ids, positions, scale, int(window), tree, out, parts)
        return
    # a token tree's rows read different slots: one row a tile there
    tiles = _ONE_ROW if q.shape[0] == 1 else sequence_tiles(seq_ids, 1 if tree.shape[0] > 0 else TILE_ROWS)
    if work < PARALLEL_MIN_WORK:
        _attend_tiles_serial(q, k, v, seq_ids, positions, scale, int(window), tree, out, tiles)
        return
    parts = head_parts(tiles.shape[0] - 1, k.shape[1], q.shape[1] // k.shape[1], numba.get_num_threads())
    _attend_tiles_parallel(q, k, v, seq_ids, positions, scale, int(window), tree, out, tiles, parts)


_ONE_ROW = np.array([0, 1], np.int64)


def head_parts(rows: int, n_kv: int, group: int, threads: int) -> int:
    """Into how many slices _attend_parallel cuts each KV head's ``group`` query heads: whole groups when the
    (row, KV head) pairs keep every thread busy, else (a decode step) enough slices for the threads.  One
    row of 3 KV heads on 2 threads (SmolLM2's decode) was 3 jobs, one thread doing two of them: slices of
    its 3 heads (2 + 1) give 6 jobs, 5 heads' work against 4."""
    pairs = rows * n_kv
    if pairs >= threads and (rows > 1 or pairs % threads == 0):
        return 1
    return min(group, -(-threads // pairs) if pairs < threads else threads)
