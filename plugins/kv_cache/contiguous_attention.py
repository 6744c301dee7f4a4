"""Causal attention over a contiguous K/V store, numba.

Layout of one layer's store: k, v of shape (n_seqs, n_kv_heads, max_tokens, head_dim), so the keys a head
reads are contiguous.  The values are f32, or f16 bit patterns (uint16) that the kernels widen as they read
them (corert.kernels.half's f16_value: one ``vcvtph2ps`` per 16 halves with F16C, a 454-row prompt's
attention 16% faster on gemma3 than integer widening): the same kernels, typed per store dtype by ``_kv``.  Every (row, head) pair is
computed independently by the same code, so a row's output does not depend on which other rows are in the
batch.  Grouped-query attention: query head h reads KV head h // (n_heads / n_kv_heads).  Sliding-window
layers (gemma3's local ones) pass ``window`` > 0: a row at position p reads positions p - window + 1 .. p
only.  Token-tree rows (``tree``, corert.tree.TreeMask.visible)
read the context and their ancestors' slots only, in path order (corert.kernels.tree_rows).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from corert import numba_setup  # noqa: F401
from corert.kernels.fast_exp import exp_f32
from corert.kernels.half import f16_bits, f16_value
from corert.kernels.tree_rows import balanced_row, row_span, slot_of
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
    Serial or parallel over (row, KV head) by the amount of work; both run the same per-group kernel, so a
    row's output never depends on which."""
    if tree.shape[0] == 0 and positions.shape[0] == 1:  # a decode step: its span without array arithmetic
        reach = int(positions[0]) + 1
        span = min(reach, window) if window > 0 else reach
    else:
        reach = positions + 1 if tree.shape[0] == 0 else tree[:, 0] + (tree[:, 1:] >= 0).sum(axis=1)
        span = int((reach if window <= 0 else np.minimum(reach, window)).sum())
    work = q.shape[1] * span * q.shape[2]
    if work < PARALLEL_MIN_WORK:
        _attend_serial(q, k, v, seq_ids, positions, scale, int(window), tree, out)
        return
    parts = head_parts(q.shape[0], k.shape[1], q.shape[1] // k.shape[1], numba.get_num_threads())
    _attend_parallel(q, k, v, seq_ids, positions, scale, int(window), tree, out, parts)


def head_parts(rows: int, n_kv: int, group: int, threads: int) -> int:
    """Into how many slices _attend_parallel cuts each KV head's ``group`` query heads: whole groups when the
    (row, KV head) pairs keep every thread busy, else (a decode step) enough slices for the threads.  One
    row of 3 KV heads on 2 threads (SmolLM2's decode) was 3 jobs, one thread doing two of them: slices of
    its 3 heads (2 + 1) give 6 jobs, 5 heads' work against 4."""
    pairs = rows * n_kv
    if pairs >= threads and (rows > 1 or pairs % threads == 0):
        return 1
    return min(group, -(-threads // pairs) if pairs < threads else threads)
