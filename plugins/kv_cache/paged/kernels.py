"""Paged attention kernels (numba): K/V live in fixed-size pages of one pool, found through a page table.

Layout of one layer's pool (the store keeps all layers in one array and passes ``pool[layer]``):
  data   (n_pages, n_kv_heads, page_tokens, head_dim)   f32 | f16 bits (uint16) | int8
  scales (n_pages, n_kv_heads, page_tokens, head_dim // QB)   f16 bits (uint16), q8 only
A sequence's position t sits in page ``table[seq, t // page_tokens]`` at slot ``t % page_tokens``.
Pages are dequantized inside the kernel (f16 bits through a 65536-entry table, q8 as int8 x block scale):
no f32 copy of the cache exists anywhere.  q8 pages hold keys and values in a rotated, smoothed basis (see
q8.py); the q8 kernels take the model's queries, code them into that basis (H(q / w)), decode the outputs
back through H, and add ``sink[kv_head] . q`` to the score of position 0, whose key is stored relative to a
calibrated reference.  All of it in the one call: around a decode step's few rows the numpy calls that did
it cost more than the attention itself.

Token-tree rows (``tree``: corert.tree.TreeMask.visible; empty for plain causal rows) read their context and
then their ancestors' slots, in path order, so a node's output is its path's sequential output.

Every (row, query head) pair is computed by the same code whatever else is in the batch, so a row's output
depends only on its query and its own sequence's K/V (the KVStore contract that makes batching and
verification exact).

Variants (a dispatch table, chosen once per store):
  wide    fastmath, unsigned indices, run-time block bounds: LLVM vectorizes the head_dim loops (ymm on
          avx2, q registers on neon).  q8: one job per (tile of up to TILE_ROWS rows of one sequence, KV head)
          that serves the tile's rows' query heads together, each K and V row of their common context
          dequantized once for all of them; the softmax's e^x in f32 arithmetic (corert.kernels.fast_exp)
          rather than libm's
  scalar  strictly ordered sums, no fastmath, one job per (row, query head): the reference the wide kernels
          are tested against
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, uint64

from corert import numba_setup  # noqa: F401  (threading layer before the first prange)
from corert.kernels.fast_exp import exp_f32 as _exp
from corert.kernels.simd import prefetch

from corert.kernels.tree_rows import balanced_row, row_span, sequence_tiles, slot_of

from .rotation import rotate_vec
from .writes import QB


# -- softmax over a score row (shared) -------------------------------------------------------------------
@njit(cache=True, inline="always")
def _exp_normalize(scores, m):
    total = np.float32(0.0)
    for t in range(scores.shape[0]):
        e = np.exp(scores[t] - m)
        scores[t] = e
        total += e
    return total


@njit(fastmath=True, cache=True, inline="always")
def _exp_normalize_wide(scores, m):
    """_exp_normalize with e^x in f32 arithmetic (corert.kernels.fast_exp, relative error < 1e-8) that LLVM
    vectorizes: without SVML (numba's vector maths, not installed) np.exp is a libm call per score, ~17% of
    the q8 kernel's time per position (SmolLM2, 8 decode rows; docs/benchmarks.md).  The scalar reference
    keeps np.exp."""
    total = np.float32(0.0)
    for t in range(scores.shape[0]):
        e = _exp(scores[t] - m)
        scores[t] = e
        total += e
    return total


@njit(cache=True, inline="always")
def _window_start(length, window):
    """The first position a row reading positions < ``length`` attends to: the last ``window`` of them
    (sliding-window layers), or all (``window`` 0)."""
    return max(0, length - window) if window > 0 else 0


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
def attend_f32_scalar(q, kp, vp, tab, table, page_tokens, seq_ids, positions, scale, window, tree, out):
    """out[i, h] = softmax(q[i, h] . K * scale) V over positions 0..positions[i] of seq_ids[i]."""
    n, n_heads, hd = q.shape
    group = n_heads // kp.shape[1]
    for job in prange(n * n_heads):
        i = balanced_row(job // n_heads, n)
        h = job % n_heads
        s, kvh = seq_ids[i], h // group
        ctx, length = row_span(tree, i, positions[i])
        lo = _window_start(length, window)
        scores = np.empty(length - lo, np.float32)
        m = np.float32(-np.inf)
        for j in range(lo, length):
            t = slot_of(tree, i, ctx, j)
            pg, sl = table[s, t // page_tokens], t % page_tokens
            x = _dot_f32_s(q[i, h], kp[pg, kvh, sl], tab) * scale
            scores[j - lo] = x
            m = max(m, x)
        total = _exp_normalize(scores, m)
        o = out[i, h]
        o[:] = 0.0
        for j in range(lo, length):
            t = slot_of(tree, i, ctx, j)
            pg, sl = table[s, t // page_tokens], t % page_tokens
            _axpy_f32_s(o, scores[j - lo], vp[pg, kvh, sl], tab)
        inv = np.float32(1.0) / total
        for d in range(hd):
            o[d] *= inv


@njit(parallel=True, cache=True, boundscheck=False)
def attend_f16_scalar(q, kp, vp, tab, table, page_tokens, seq_ids, positions, scale, window, tree, out):
    n, n_heads, hd = q.shape
    group = n_heads // kp.shape[1]
    for job in prange(n * n_heads):
        i = balanced_row(job // n_heads, n)
        h = job % n_heads
        s, kvh = seq_ids[i], h // group
        ctx, length = row_span(tree, i, positions[i])
        lo = _window_start(length, window)
        scores = np.empty(length - lo, np.float32)
        m = np.float32(-np.inf)
        for j in range(lo, length):
            t = slot_of(tree, i, ctx, j)
            pg, sl = table[s, t // page_tokens], t % page_tokens
            x = _dot_f16_s(q[i, h], kp[pg, kvh, sl], tab) * scale
            scores[j - lo] = x
            m = max(m, x)
        total = _exp_normalize(scores, m)
        o = out[i, h]
        o[:] = 0.0
        for j in range(lo, length):
            t = slot_of(tree, i, ctx, j)
            pg, sl = table[s, t // page_tokens], t % page_tokens
            _axpy_f16_s(o, scores[j - lo], vp[pg, kvh, sl], tab)
        inv = np.float32(1.0) / total
        for d in range(hd):
            o[d] *= inv


@njit(cache=True, boundscheck=False)
def _coded_query(q, i, h, w, kvh, out, tmp, block):
    """out <- H(q[i, h] / w[kvh]): a query head in the basis of its KV head's q8 keys (q8.py).  No fastmath,
    in both variants, so the wide and scalar kernels see the same query.  Indexes q and w itself (no views:
    see the wide q8 kernel)."""
    for d in range(uint64(out.shape[0])):
        out[d] = q[i, h, d] / w[kvh, d]
    rotate_vec(out, tmp, block)


@njit(parallel=True, cache=True, boundscheck=False)
def attend_q8_scalar(q, kp, ks, vp, vs, w, sink, block, tab, table, page_tokens, seq_ids, positions, scale,
                     window, tree, out):
    """As attend_f32_scalar over q8 pages, taking queries and returning outputs in the model's basis: each
    query head goes to H(q / w[kv_head]) and its output back through H (``w``, ``sink``: (n_kv_heads,
    head_dim); ``block``: values one rotation mixes).  ``sink`` is what position 0's stored key lacks (its
    dot with the coded query is added to that score)."""
    n, n_heads, hd = q.shape
    group = n_heads // kp.shape[1]
    for job in prange(n * n_heads):
        i = balanced_row(job // n_heads, n)
        h = job % n_heads
        s, kvh = seq_ids[i], h // group
        ctx, length = row_span(tree, i, positions[i])
        qi = np.empty(hd, np.float32)
        tmp = np.empty(hd, np.float32)
        _coded_query(q, i, h, w, kvh, qi, tmp, block)
        lo = _window_start(length, window)
        scores = np.empty(length - lo, np.float32)
        m = np.float32(-np.inf)
        c0 = _dot_f32_s(qi, sink[kvh], tab)
        for j in range(lo, length):
            t = slot_of(tree, i, ctx, j)
            pg, sl = table[s, t // page_tokens], t % page_tokens
            x = _dot_q8_s(qi, kp[pg, kvh, sl], ks[pg, kvh, sl], tab)
            if t == 0:
                x += c0
            x *= scale
            scores[j - lo] = x
            m = max(m, x)
        total = _exp_normalize(scores, m)
        o = out[i, h]
        o[:] = 0.0
        for j in range(lo, length):
            t = slot_of(tree, i, ctx, j)
            pg, sl = table[s, t // page_tokens], t % page_tokens
            _axpy_q8_s(o, scores[j - lo], vp[pg, kvh, sl], vs[pg, kvh, sl], tab)
        inv = np.float32(1.0) / total
        for d in range(hd):
            o[d] *= inv
        rotate_vec(o, tmp, block)


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


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def attend_f32_wide(q, kp, vp, tab, table, page_tokens, seq_ids, positions, scale, window, tree, out):
    n, n_heads, hd = q.shape
    group = n_heads // kp.shape[1]
    for job in prange(n * n_heads):
        i = balanced_row(job // n_heads, n)
        h = job % n_heads
        s, kvh = seq_ids[i], h // group
        ctx, length = row_span(tree, i, positions[i])
        lo = _window_start(length, window)
        scores = np.empty(length - lo, np.float32)
        m = np.float32(-np.inf)
        qi = q[i, h]
        for j in range(lo // page_tokens, table.shape[1]):  # page by page: one table lookup per page
            t0 = j * page_tokens
            if t0 >= ctx:
                break
            pg = table[s, j]
            for sl in range(max(lo - t0, 0), min(page_tokens, ctx - t0)):
                x = _dot_f32_w(qi, kp[pg, kvh, sl], hd) * scale
                scores[t0 + sl - lo] = x
                m = max(m, x)
        for j in range(max(lo, ctx), length):  # a tree row's ancestors, slot by slot
            t = tree[i, 1 + j - ctx]
            pg, sl = table[s, t // page_tokens], t % page_tokens
            x = _dot_f32_w(qi, kp[pg, kvh, sl], hd) * scale
            scores[j - lo] = x
            m = max(m, x)
        total = _exp_normalize_wide(scores, m)
        o = out[i, h]
        o[:] = 0.0
        for j in range(lo // page_tokens, table.shape[1]):
            t0 = j * page_tokens
            if t0 >= ctx:
                break
            pg = table[s, j]
            for sl in range(max(lo - t0, 0), min(page_tokens, ctx - t0)):
                _axpy_f32_w(o, scores[t0 + sl - lo], vp[pg, kvh, sl], hd)
        for j in range(max(lo, ctx), length):
            t = tree[i, 1 + j - ctx]
            pg, sl = table[s, t // page_tokens], t % page_tokens
            _axpy_f32_w(o, scores[j - lo], vp[pg, kvh, sl], hd)
        inv = np.float32(1.0) / total
        for d in range(hd):
            o[d] *= inv


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def attend_f16_wide(q, kp, vp, tab, table, page_tokens, seq_ids, positions, scale, window, tree, out):
    n, n_heads, hd = q.shape
    group = n_heads // kp.shape[1]
    for job in prange(n * n_heads):
        i = balanced_row(job // n_heads, n)
        h = job % n_heads
        s, kvh = seq_ids[i], h // group
        ctx, length = row_span(tree, i, positions[i])
        lo = _window_start(length, window)
        scores = np.empty(length - lo, np.float32)
        m = np.float32(-np.inf)
        qi = q[i, h]
        for j in range(lo // page_tokens, table.shape[1]):  # page by page: one table lookup per page
            t0 = j * page_tokens
            if t0 >= ctx:
                break
            pg = table[s, j]
            for sl in range(max(lo - t0, 0), min(page_tokens, ctx - t0)):
                x = _dot_f16_w(qi, kp[pg, kvh, sl], tab, hd) * scale
                scores[t0 + sl - lo] = x
                m = max(m, x)
        for j in range(max(lo, ctx), length):  # a tree row's ancestors, slot by slot
            t = tree[i, 1 + j - ctx]
            pg, sl = table[s, t // page_tokens], t % page_tokens
            x = _dot_f16_w(qi, kp[pg, kvh, sl], tab, hd) * scale
            scores[j - lo] = x
            m = max(m, x)
        total = _exp_normalize_wide(scores, m)
        o = out[i, h]
        o[:] = 0.0
        for j in range(lo // page_tokens, table.shape[1]):
            t0 = j * page_tokens
            if t0 >= ctx:
                break
            pg = table[s, j]
            for sl in range(max(lo - t0, 0), min(page_tokens, ctx - t0)):
                _axpy_f16_w(o, scores[t0 + sl - lo], vp[pg, kvh, sl], tab, hd)
        for j in range(max(lo, ctx), length):
            t = tree[i, 1 + j - ctx]
            pg, sl = table[s, t // page_tokens], t % page_tokens
            _axpy_f16_w(o, scores[j - lo], vp[pg, kvh, sl], tab, hd)
        inv = np.float32(1.0) / total
        for d in range(hd):
            o[d] *= inv


# -- wide q8: one job per (row, KV head), its query heads together -----------------------------------------
# The helpers index the pool and the caller's arrays directly and are inlined: a view per position or per head
# costs a reference count (an atomic, shared by both threads), more than the arithmetic it serves.
@njit(fastmath=True, cache=True, boundscheck=False, inline="always")
def _dequant_q8(x, xs, pg, kvh, sl, tab, bs, out):
    """out <- the page row x[pg, kvh, sl] in f32: int8 values times their block's scale."""
    ubs = uint64(bs)
    for b in range(xs.shape[3]):
        o = uint64(b) * ubs
        sb = tab[xs[pg, kvh, sl, b]]
        for j in range(ubs):
            out[o + j] = np.float32(x[pg, kvh, sl, o + j]) * sb


@njit(cache=True, boundscheck=False, inline="always")
def _prefetch_page(x, xs, table, s, j, kvh, n_slots):
    """Ask for the cache lines of the first n_slots int8 rows (and their scales) of KV head kvh in the
    sequence's j-th page.  A page is a run of lines the hardware follows, but the next page is anywhere and
    the whole layer is cold after its weights: asking one page ahead took a decode step's attention from
    ~37 to ~28 us a layer (8 rows, smollm2)."""
    if j >= table.shape[1] or n_slots <= 0:
        return
    n_kv, P, hd, nb = x.shape[1], x.shape[2], x.shape[3], xs.shape[3]
    r = (table[s, j] * n_kv + kvh) * P
    for o in range(0, n_slots * hd, 64):
        prefetch(x, r * hd + o)
    for o in range(0, n_slots * nb * 2, 64):
        prefetch(xs, r * nb + o // 2)


#: rows of one sequence that share a job of the wide q8 kernel (a verify step's pending row and its drafts, a
#: prompt's rows a few at a time): every K and V row of their common context is dequantized once for all of
#: them.  Their query heads' arithmetic is per (row, head) whatever the tile, so a row's output stays exact.
TILE_ROWS = 8


@njit(fastmath=True, cache=True, boundscheck=False, inline="always")
def _score_tile(qg, nt, row, hd, first, c0, scale, scores, col, m):
    """Scores of one dequantized key row for the query heads of a tile's first ``nt`` rows (column ``col``);
    ``first``: the row is position 0, whose key lacks the sink term."""
    for rr in range(nt):
        for r in range(qg.shape[1]):
            x = np.float32(0.0)
            for d in range(uint64(hd)):
                x += qg[rr, r, d] * row[d]
            if first:
                x += c0[rr, r]
            x *= scale
            scores[rr, r, col] = x
            m[rr, r] = max(m[rr, r], x)


@njit(fastmath=True, cache=True, boundscheck=False, inline="always")
def _accumulate_tile(og, nt, row, hd, scores, col):
    for rr in range(nt):
        for r in range(og.shape[1]):
            p = scores[rr, r, col]
            for d in range(uint64(hd)):
                og[rr, r, d] += p * row[d]


@njit(fastmath=True, cache=True, boundscheck=False)
def _attend_q8_tile(q, kp, ks, vp, vs, w, sink, block, tab, table, page_tokens, s, lo, i0, nt, positions, tree, g,
                    scale, out):
    """Rows i0..i0+nt-1 (one sequence, the same first position ``lo``), their query heads that read KV head g:
    each K and V row of the context they all read (lo..common-1) is dequantized once for all of them
    (grouped-query attention, and a verify step's rows over one context); then each row's own positions
    (a causal row's last few, a tree row's ancestor slots, tree_rows) one row at a time.  A row's positions
    are visited in its visible order and each (row, head) sum runs the same code whatever the tile, so its
    output is the one it gets alone."""
    n_heads, hd = q.shape[1], q.shape[2]
    group = n_heads // kp.shape[1]
    bs = hd // ks.shape[3]
    h0 = g * group
    common, span = table.shape[1] * page_tokens, 0
    for rr in range(nt):
        ctx, length = row_span(tree, i0 + rr, positions[i0 + rr])
        common = min(common, ctx)
        span = max(span, length - lo)
    common = max(common, lo)
    th = nt * group * hd
    buf = np.empty(2 * th + hd + 2 * nt * group + nt * group * span, np.float32)  # one allocation per job
    qg = buf[:th].reshape((nt, group, hd))  # coded queries
    og = buf[th:2 * th].reshape((nt, group, hd))  # outputs, in the value basis
    row = buf[2 * th:2 * th + hd]  # a dequantized K or V row; rotation scratch
    b = 2 * th + hd
    c0 = buf[b:b + nt * group].reshape((nt, group))  # sink term, then 1 / softmax total
    m = buf[b + nt * group:b + 2 * nt * group].reshape((nt, group))  # running max score
    scores = buf[b + 2 * nt * group:].reshape((nt, group, span))
    for rr in range(nt):
        for r in range(group):
            _coded_query(q, i0 + rr, h0 + r, w, g, qg[rr, r], row, block)
            x = np.float32(0.0)
            for d in range(uint64(hd)):
                x += qg[rr, r, d] * sink[g, d]
            c0[rr, r] = x
            m[rr, r] = -np.inf
    j0 = lo // page_tokens
    _prefetch_page(kp, ks, table, s, j0, g, min(page_tokens, common - j0 * page_tokens))
    _prefetch_page(vp, vs, table, s, j0, g, min(page_tokens, common - j0 * page_tokens))
    for j in range(j0, table.shape[1]):  # the common context page by page: one table lookup per page
        t0 = j * page_tokens
        if t0 >= common:
            break
        pg = table[s, j]
        _prefetch_page(kp, ks, table, s, j + 1, g, min(page_tokens, common - t0 - page_tokens))
        for sl in range(max(lo - t0, 0), min(page_tokens, common - t0)):
            _dequant_q8(kp, ks, pg, g, sl, tab, bs, row)
            _score_tile(qg, nt, row, hd, t0 + sl == 0, c0, scale, scores, t0 + sl - lo, m)
    for rr in range(nt):  # each row's own positions
        i = i0 + rr
        ctx, length = row_span(tree, i, positions[i])
        for jt in range(common, length):
            t = slot_of(tree, i, ctx, jt)
            _dequant_q8(kp, ks, table[s, t // page_tokens], g, t % page_tokens, tab, bs, row)
            _score_tile(qg[rr:rr + 1], 1, row, hd, t == 0, c0[rr:rr + 1], scale, scores[rr:rr + 1], jt - lo,
                        m[rr:rr + 1])
    for rr in range(nt):
        length = row_span(tree, i0 + rr, positions[i0 + rr])[1]
        for r in range(group):
            c0[rr, r] = np.float32(1.0) / _exp_normalize_wide(scores[rr, r, :length - lo], m[rr, r])
            for d in range(uint64(hd)):
                og[rr, r, d] = 0.0
    for j in range(j0, table.shape[1]):
        t0 = j * page_tokens
        if t0 >= common:
            break
        pg = table[s, j]
        _prefetch_page(vp, vs, table, s, j + 1, g, min(page_tokens, common - t0 - page_tokens))
        for sl in range(max(lo - t0, 0), min(page_tokens, common - t0)):
            _dequant_q8(vp, vs, pg, g, sl, tab, bs, row)
            _accumulate_tile(og, nt, row, hd, scores, t0 + sl - lo)
    for rr in range(nt):
        i = i0 + rr
        ctx, length = row_span(tree, i, positions[i])
        for jt in range(common, length):
            t = slot_of(tree, i, ctx, jt)
            _dequant_q8(vp, vs, table[s, t // page_tokens], g, t % page_tokens, tab, bs, row)
            _accumulate_tile(og[rr:rr + 1], 1, row, hd, scores[rr:rr + 1], jt - lo)
    for rr in range(nt):
        for r in range(group):
            inv = c0[rr, r]
            for d in range(uint64(hd)):
                og[rr, r, d] *= inv
            rotate_vec(og[rr, r], row, block)  # back to the model's basis
            for d in range(uint64(hd)):
                out[i0 + rr, h0 + r, d] = og[rr, r, d]


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def attend_q8_wide(q, kp, ks, vp, vs, w, sink, block, tab, table, page_tokens, seq_ids, positions, scale,
                   window, tree, out):
    n_kv = kp.shape[1]
    # a sliding window starts each row's context elsewhere: one row a tile there
    starts = sequence_tiles(seq_ids, TILE_ROWS if window == 0 else 1)
    n_tiles = starts.shape[0] - 1
    for job in prange(n_tiles * n_kv):
        k = balanced_row(job // n_kv, n_tiles)
        g = job % n_kv
        i0 = starts[k]
        lo = _window_start(row_span(tree, i0, positions[i0])[1], window)
        _attend_q8_tile(q, kp, ks, vp, vs, w, sink, block, tab, table, page_tokens, seq_ids[i0], lo, i0,
                        starts[k + 1] - i0, positions, tree, g, scale, out)


#: kernel variant -> page dtype -> attention kernel.  q8 kernels take (q, k, k_scales, v, v_scales, w, sink, block,
#: ...), the others (q, k, v, ...); the f16 table is passed to all (f32 ignores it).
ATTEND = {
    "wide": {"f32": attend_f32_wide, "f16": attend_f16_wide, "q8": attend_q8_wide},
    "scalar": {"f32": attend_f32_scalar, "f16": attend_f16_scalar, "q8": attend_q8_scalar},
}
