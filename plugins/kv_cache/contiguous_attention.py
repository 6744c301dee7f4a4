"""Causal attention over a contiguous f32 K/V store (the reference memory layout), numba.

Layout of one layer's store: k, v of shape (n_seqs, n_kv_heads, max_tokens, head_dim), so the keys a head
reads are contiguous.  Every (row, head) pair is computed independently by the same code, so a row's output
does not depend on which other rows are in the batch.  Grouped-query attention: query head h reads KV head
h // (n_heads / n_kv_heads).  Sliding-window layers (gemma3's local ones) pass ``window`` > 0: a row at
position p reads positions p - window + 1 .. p only.  Token-tree rows (``tree``, corert.tree.TreeMask.visible)
read the context and their ancestors' slots only, in path order (corert.kernels.tree_rows).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from corert import numba_setup  # noqa: F401
from corert.kernels.fast_exp import exp_f32
from corert.kernels.tree_rows import row_span, slot_of
from corert.tree import NO_TREE


@njit(fastmath=True, cache=True, inline="always")
def _dot(a, b):
    s = np.float32(0.0)
    for i in range(a.shape[0]):
        s += a[i] * b[i]
    return s


@njit(fastmath=True, cache=True, inline="always")
def _dot4(q, k0, k1, k2, k3):
    """q . k0 .. q . k3 in one pass: each q value is loaded once for four keys."""
    s0 = s1 = s2 = s3 = np.float32(0.0)
    for d in range(q.shape[0]):
        qd = q[d]
        s0 += qd * k0[d]
        s1 += qd * k1[d]
        s2 += qd * k2[d]
        s3 += qd * k3[d]
    return s0, s1, s2, s3


@njit(cache=True)
def write_contiguous(k_store, v_store, seq_ids, positions, k, v):
    """Rows' K and V (rows, n_kv_heads, head_dim) into one layer's store (n_seqs, n_kv_heads, max_tokens,
    head_dim)."""
    for i in range(k.shape[0]):
        s, p = seq_ids[i], positions[i]
        for h in range(k.shape[1]):
            k_store[s, h, p, :] = k[i, h]
            v_store[s, h, p, :] = v[i, h]


#: keys a head's loops take at a time: a q value is loaded once per four dot products, and an output value
#: is loaded and stored once per four weighted values (one key at a time, the loads and stores of ``o`` and
#: ``q`` bound the loops: a 450-token prompt's attention took 12.4 ms a gemma3 layer, now ~8)
_KEYS = 4


@njit(fastmath=True, cache=True)
def _attend_head(qi, k, v, tree, i, lo, ctx, scale, o, scores):
    """``o = softmax(qi . k * scale) @ v`` over row i's visible positions lo..lo+len(scores)-1 (k, v: one
    sequence and KV head, (max_tokens, head_dim)); ``ctx``: where its context ends (tree_rows)."""
    length = scores.shape[0]
    hd = o.shape[0]
    whole = length - length % _KEYS
    for t in range(0, whole, _KEYS):
        a, b, c, d = _dot4(qi, k[slot_of(tree, i, ctx, lo + t)], k[slot_of(tree, i, ctx, lo + t + 1)],
                           k[slot_of(tree, i, ctx, lo + t + 2)], k[slot_of(tree, i, ctx, lo + t + 3)])
        scores[t], scores[t + 1], scores[t + 2], scores[t + 3] = a * scale, b * scale, c * scale, d * scale
    for t in range(whole, length):
        scores[t] = _dot(qi, k[slot_of(tree, i, ctx, lo + t)]) * scale
    m = np.float32(-np.inf)
    for t in range(length):
        m = max(m, scores[t])
    total = np.float32(0.0)
    for t in range(length):
        e = exp_f32(scores[t] - m)
        scores[t] = e
        total += e
    o[:] = 0.0
    for t in range(0, whole, _KEYS):
        w0, w1, w2, w3 = scores[t], scores[t + 1], scores[t + 2], scores[t + 3]
        v0, v1 = v[slot_of(tree, i, ctx, lo + t)], v[slot_of(tree, i, ctx, lo + t + 1)]
        v2, v3 = v[slot_of(tree, i, ctx, lo + t + 2)], v[slot_of(tree, i, ctx, lo + t + 3)]
        for d in range(hd):
            o[d] += (w0 * v0[d] + w1 * v1[d]) + (w2 * v2[d] + w3 * v3[d])
    for t in range(whole, length):
        w = scores[t]
        vt = v[slot_of(tree, i, ctx, lo + t)]
        for d in range(hd):
            o[d] += w * vt[d]
    inv = np.float32(1.0) / total
    for d in range(hd):
        o[d] *= inv


@njit(cache=True, inline="always")
def window_start(p, window):
    """The first position a row at position ``p`` reads (0 without a window)."""
    return max(0, p + 1 - window) if window > 0 else 0


@njit(parallel=True, cache=True)
def _attend_parallel(q, k, v, seq_ids, positions, scale, window, tree, out):
    n, n_heads, hd = q.shape
    group = n_heads // k.shape[1]
    for job in prange(n * n_heads):
        i = job // n_heads
        h = job - i * n_heads
        s, kvh = seq_ids[i], h // group
        ctx, end = row_span(tree, i, positions[i])
        lo = window_start(end - 1, window)
        _attend_head(q[i, h], k[s, kvh], v[s, kvh], tree, i, lo, ctx, scale, out[i, h],
                     np.empty(end - lo, np.float32))


@njit(cache=True)
def _attend_serial(q, k, v, seq_ids, positions, scale, window, tree, out):
    n, n_heads, hd = q.shape
    group = n_heads // k.shape[1]
    for i in range(n):
        ctx, end = row_span(tree, i, positions[i])
        lo = window_start(end - 1, window)
        scores = np.empty(end - lo, np.float32)
        for h in range(n_heads):
            s, kvh = seq_ids[i], h // group
            _attend_head(q[i, h], k[s, kvh], v[s, kvh], tree, i, lo, ctx, scale, out[i, h], scores)


#: below this many query-key products a forward's attention runs on the calling thread: waking the pool
#: costs more than the work (decode over a short context)
PARALLEL_MIN_WORK = 1 << 16


def attend_contiguous(q, k, v, seq_ids, positions, scale, out, window=0, tree=NO_TREE):
    """``out[i, h] = softmax(q[i, h] . K[:p+1] * scale) @ V[:p+1]`` with p = positions[i], for the K/V of
    sequence seq_ids[i] (a tree row: over its context and ancestors).  q, out: (rows, n_heads, head_dim).
    Serial or parallel over (row, head) by the amount of work; both run the same per-head kernel, so a
    row's output never depends on which."""
    reach = positions + 1 if tree.shape[0] == 0 else tree[:, 0] + (tree[:, 1:] >= 0).sum(axis=1)
    span = reach if window <= 0 else np.minimum(reach, window)
    work = q.shape[1] * int(span.sum()) * q.shape[2]
    (_attend_parallel if work >= PARALLEL_MIN_WORK else _attend_serial)(q, k, v, seq_ids, positions, scale,
                                                                         int(window), tree, out)
