"""Matrix products on AMX-INT8 tiles (the ``amx`` variant): matmul_i8's layouts, levels and results, with the
integer block products of 16 activation rows at a time done by one ``tdpbsud`` (core/kernels/amx.py).

Why.  A prompt's products are ~80% of its time, and matmul_i8's ``vpdpbusd`` loop runs them at about half
of the VNNI peak (64 multiply-adds an instruction).  One tile instruction does a 16-row x 16-output x 32-value
block of them (8192), so the integer part nearly vanishes and what is left is the f32 epilogue per row and
block (the scales, matmul_i8's ``_add_levels``), which both variants share.

Why it is exact and needs no new layout.  matmul_i8 already keeps a 16-output-row group's block as 8 operands
of 64 bytes [step s][row r][i < 4] = column 4 s + i of row r: an AMX B tile (K/4 rows of 16 columns x 4
consecutive K bytes).  q8 blocks are loaded as they are; q4 / Q4_K / packed q5 / packed q6 blocks are
unpacked by matmul_i8's own code into a 512-byte buffer first.  The activations ``xq`` (n, levels, cols) are
the rows of an A tile as they lie: (row, level) pairs ``cols`` bytes apart, so one tile holds 16 / levels
rows with all their levels, and C's row j is row ``j // levels``'s level ``j % levels`` product (from a
chunk of C rows on, a copy of them block-major, _tile_rows: a tile is then 512 contiguous bytes).  A C row is
the 16 int32 lanes the vnni kernel's block dot gives for that row (before its bias corrections), and the
epilogue (q4_row_step, scaled_row_step, q6_scaled) is the same code, so the outputs are bit-identical to
vnni's for every layout, row count and level count (tests/test_native_amx.py).  q6 has a scale per 16
values: its half blocks are two K = 16 products.

The activations get whole pairs of tiles: ``xq`` has 2 * TILE_ROWS zero rows after x's (their products are
never read).  q8 / q5 / q6 operands are made signed (q, not q + bias) for ``tdpbssd``: no bias * sum(x) to take
out per row, the same integers.  The tile state is per thread: each prange task loads the configuration and releases it at its end.
Products of fewer than AMX_MIN_ROWS rows (decode) run the vnni kernels (products.py).
"""
from __future__ import annotations

import numpy as np
from numba import literally, njit, prange, types
from numba.extending import overload

from ... import numba_setup  # noqa: F401
from ...kernels import amx
from ...kernels.amx import dot_s8s8, dot_s8u8, load_config, release_tiles, tile_load, tile_store, tile_zero
from ...kernels.simd import high_nibbles, load_bytes, load_f32, load_i8_i32, load_i32, low_nibbles, minus_16, \
    minus_32, minus_128, prefetch, store_bytes, zeros_i32
from .matmul import QK, group_part
from .matmul_i8 import (PREFETCH_BYTES, Q4K_BLOCKS, Q4K_SCALES, Q5_PACKED, Q6_PACKED, ROWS, _group_bytes,
                        _int8_block, _q5_packed_block, _q6_packed_block, _store_rows, padded_levels,
                        q4_row_step, q4k_block_scales, q6_scaled, scaled_row_step)
from .row_tiles import SLICES_PER_THREAD, row_tiles, slice_bounds

#: rows of an A tile (activation rows x levels) and of C
TILE_ROWS = 16
#: C rows of a chunk (tiles in pairs, two chains), whose products are made before their epilogue reads them:
#: the stores are long done by then, and the tile unit runs back to back instead of waiting on each epilogue.
#: With few rows (at most FEW_ROWS C rows) a chunk spans CHUNK_BLOCKS blocks: each block's unpacking, tile
#: loads and stores are a chain of latencies that the next blocks' overlap; with more, one block (4 blocks of
#: 128 rows, 32-64 KB of products, left L1 and cost 10-25%: bench-results/s12-amx12/products-qwen05-v5.json)
CHUNK_ROWS, CHUNK_BLOCKS, FEW_ROWS = 8 * TILE_ROWS, 4, 2 * TILE_ROWS
#: the products of fewer rows run the vnni kernels: at 8 rows the tiles were 0.87-0.9x vnni's, at 16 0.88-1.2x,
#: at 64 1.1-1.44x (Qwen 0.5B's layer 0 on this Xeon: bench-results/s12-amx12/products-qwen05-v6.json)
AMX_MIN_ROWS = 16
#: tile shapes (rows, bytes a row): 0 a block's weights (B), 1 and 2 the activations (A) of a pair of tiles,
#: 3-6 their products (C); q6: 0 and 7 the weights of a block's columns 0-15 and 16-31, 1 and 2 the
#: activations' halves, 3-6 a pair of tiles' half products
CONFIG = amx.tile_config(((8, 64), (TILE_ROWS, QK), (TILE_ROWS, QK)) + ((TILE_ROWS, 64),) * 4)
CONFIG_Q6 = amx.tile_config(((4, 64), (TILE_ROWS, QK // 2), (TILE_ROWS, QK // 2)) + ((TILE_ROWS, 64),) * 4
                            + ((4, 64),))


@njit(inline="always")
def _tiles(n, cols, group_bytes, groups, l2, threads):
    """row_tiles' tiles rounded to whole A tiles of 16 rows, and slices of groups for the threads even when
    untiled: each slice loads the tile configuration once."""
    tile, slices = row_tiles(n, cols, group_bytes, groups, l2, threads)
    if tile >= n:
        return n, min(groups, SLICES_PER_THREAD * max(1, threads))
    return max(CHUNK_ROWS, tile // CHUNK_ROWS * CHUNK_ROWS), slices


@njit(inline="always")
def _task_start(config):
    """A prange task's tile configuration and buffers: the unpacked weights of a block (8 operands), a chunk's
    int32 products (two, for q6's halves)."""
    load_config(config)
    return np.empty(8 * 64, np.uint8), np.empty(CHUNK_BLOCKS * 2 * CHUNK_ROWS * ROWS, np.int32)


@njit(inline="always")
def _store_operands(wbuf, w0, w1, w2, w3, w4, w5, w6, w7):
    """A block's 8 operands (columns 0-3, 4-7, ..., 28-31) into the buffer tiles load them from."""
    store_bytes(wbuf, 0, w0)
    store_bytes(wbuf, 64, w1)
    store_bytes(wbuf, 128, w2)
    store_bytes(wbuf, 192, w3)
    store_bytes(wbuf, 256, w4)
    store_bytes(wbuf, 320, w5)
    store_bytes(wbuf, 384, w6)
    store_bytes(wbuf, 448, w7)


@njit(inline="always")
def _store_signed(wbuf, bias, w0, w1, w2, w3, w4, w5, w6, w7):
    """_store_operands of q + ``bias`` bytes as signed q: a signed tile product (``tdpbssd``) has no
    bias * sum(x) to take out per row, which the vnni kernels do (their ``vpdpbusd`` needs unsigned
    weights); the integers are the same."""
    if bias == 128:
        _store_operands(wbuf, minus_128(w0), minus_128(w1), minus_128(w2), minus_128(w3), minus_128(w4),
                        minus_128(w5), minus_128(w6), minus_128(w7))
    elif bias == 32:
        _store_operands(wbuf, minus_32(w0), minus_32(w1), minus_32(w2), minus_32(w3), minus_32(w4), minus_32(w5),
                        minus_32(w6), minus_32(w7))
    else:
        _store_operands(wbuf, minus_16(w0), minus_16(w1), minus_16(w2), minus_16(w3), minus_16(w4), minus_16(w5),
                        minus_16(w6), minus_16(w7))


@njit(parallel=True, cache=True, boundscheck=False)
def _tile_rows(xq):
    """``xq`` (rows, levels, cols) as the A tiles read it: (cols / 32, rows * levels, 32), block b's C rows
    ((row, level) pairs) 32 bytes apart.  A tile load then reads 512 contiguous bytes and a block's tiles
    follow each other, instead of 16 rows ``cols`` bytes apart."""
    rows, cols = xq.shape[0] * xq.shape[1], xq.shape[2]
    flat = xq.reshape((rows, cols))
    xa = np.empty((cols // QK, rows, QK), np.uint8)
    for b in prange(cols // QK):
        for r in range(rows):
            for i in range(QK):
                xa[b, r, i] = flat[r, b * QK + i]
    return xa


@njit(inline="always")
def _activations(xq, levels):
    """(A tiles' array, C row stride, block stride) in bytes: _tile_rows' layout from a whole chunk of C rows
    on (in-process A/B against xq as it lies, quiet: 1.04-1.27x at 64-256 rows on q4 / q8 / q6 shapes of
    Qwen 1.5B and gemma3, bench-results/s13-amx13/ab4-tile-rows-gated.jsonl), else xq as it lies (at 16-32
    rows the copy lost 5-19%: ab3-tile-rows.jsonl, ab4)."""
    cols, c_rows = xq.shape[2], (xq.shape[0] - 2 * TILE_ROWS) * levels
    if c_rows < CHUNK_ROWS:
        return xq, cols, QK
    xa = _tile_rows(xq)
    return xa, QK, xa.shape[1] * QK


@njit(inline="always")
def _products(xa, rs, bs, r0, r1, b, cbuf, co, signed):
    """cbuf[co + (r - r0) * 16] = C row r: C rows r0..r1 of the activations ``xa`` (C row r of block b at
    r * rs + b * bs: _activations; whole tiles) . block b's weights in tile 0 (``signed`` bytes, else
    unsigned)."""
    for r in range(r0, r1, 2 * TILE_ROWS):
        tile_load(1, xa, r * rs + b * bs, rs)
        tile_zero(3)
        dot_s8s8(3, 1, 0) if signed else dot_s8u8(3, 1, 0)
        if r + TILE_ROWS < r1:  # the pair's second tile
            tile_load(2, xa, (r + TILE_ROWS) * rs + b * bs, rs)
            tile_zero(4)
            dot_s8s8(4, 2, 0) if signed else dot_s8u8(4, 2, 0)
            tile_store(4, cbuf, co + (r - r0 + TILE_ROWS) * ROWS, 64)
        tile_store(3, cbuf, co + (r - r0) * ROWS, 64)


@njit(inline="always")
def _half_products(xa, rs, bs, r0, r1, b, cbuf, co):
    """_products of q6's half blocks (weights in tiles 0 and 7): the first halves' C rows in cbuf from co, the
    second's from co + CHUNK_ROWS * 16."""
    for r in range(r0, r1, 2 * TILE_ROWS):
        for k in range(1 + (r + TILE_ROWS < r1)):  # the pair's tiles
            o, c = (r + k * TILE_ROWS) * rs + b * bs, co + (r - r0 + k * TILE_ROWS) * ROWS
            tile_load(1, xa, o, rs)
            tile_load(2, xa, o + QK // 2, rs)
            if k == 0:
                tile_zero(3)
                tile_zero(4)
                dot_s8s8(3, 1, 0)
                dot_s8s8(4, 2, 7)
                tile_store(3, cbuf, c, 64)
                tile_store(4, cbuf, CHUNK_ROWS * ROWS + c, 64)
            else:
                tile_zero(5)
                tile_zero(6)
                dot_s8s8(5, 1, 0)
                dot_s8s8(6, 2, 7)
                tile_store(5, cbuf, c, 64)
                tile_store(6, cbuf, CHUNK_ROWS * ROWS + c, 64)


@njit(inline="always")
def _rows_of(r0, t1, levels):
    """The activation rows whose levels are C rows from r0 (a chunk, cut at t1)."""
    return range(r0 // levels, min(t1, (r0 + CHUNK_ROWS) // levels))


@njit(inline="always")
def _level_ints(cbuf, r0, t, levels, half):
    """Row t's level products (C rows of the tile from r0; ``half``: the second half block's C)."""
    j = (t * levels - r0) * ROWS + half
    return load_i32(cbuf, j), load_i32(cbuf, j + (levels - 1) * ROWS)


@njit(inline="always")
def _q4_group(qg, dg, mg, factored, g, xa, rs, bs, xd, xs, out, t0, t1, levels, wbuf, cbuf):
    """Group g of a q4 matrix (scales dg, offsets mg) or, ``factored``, a Q4_K one (scales dg: layout_q4k)
    . x[t] into out[t], rows t0..t1."""
    acc = np.zeros((t1 - t0) * ROWS, np.float32)
    nb, region = xd.shape[2], CHUNK_ROWS * ROWS
    blocks = CHUNK_BLOCKS if (t1 - t0) * levels <= FEW_ROWS else 1
    for b0 in range(0, nb, blocks):
        for r0 in range(t0 * levels, t1 * levels, CHUNK_ROWS):
            r1 = min(t1 * levels, r0 + CHUNK_ROWS)
            for b in range(b0, min(nb, b0 + blocks)):
                o = b * 4 * 64
                for line in range(4):
                    prefetch(qg, o + PREFETCH_BYTES + line * 64)
                w0, w1 = load_bytes(qg, o), load_bytes(qg, o + 64)
                w2, w3 = load_bytes(qg, o + 128), load_bytes(qg, o + 192)
                _store_operands(wbuf, low_nibbles(w0), low_nibbles(w1), low_nibbles(w2), low_nibbles(w3),
                                high_nibbles(w0), high_nibbles(w1), high_nibbles(w2), high_nibbles(w3))
                tile_load(0, wbuf, 0, 64)
                _products(xa, rs, bs, r0, r1, b, cbuf, (b - b0) * region, False)
            for b in range(b0, min(nb, b0 + blocks)):
                if factored:  # Q4_K: the block's scale and offset from its super block's factors
                    s, h, k = b // Q4K_BLOCKS, b % Q4K_BLOCKS // 4, b % 4
                    so = s * Q4K_SCALES
                    dv, mv = q4k_block_scales(load_i32(dg, so + 32 * h), load_i32(dg, so + 64),
                                              load_f32(dg, so + 96), load_f32(dg, so + 112), h, k)
                else:
                    dv, mv = load_f32(dg, b * ROWS), load_f32(mg, b * ROWS)
                for t in _rows_of(r0, t1, levels):
                    i1, i2 = _level_ints(cbuf, r0, t, levels, (b - b0) * region)
                    q4_row_step(acc, t, t0, i1, i2, dv, mv, xd, xs, b, levels)
    _store_rows(acc, out, t0, t1, g, out.shape[1])


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def q4_matmul(q, d, m, x, out, l2, threads, levels, factored):
    """matmul_i8.q4_matmul on tiles, or (``factored``: ``d`` and ``m`` both Q4_K's scales, layout_q4k)
    matmul_i8.q4k_matmul."""
    literally(levels)
    literally(factored)
    xq, xd, _, xs = padded_levels(x, levels, 2 * TILE_ROWS)
    xa, rs, bs = _activations(xq, levels)
    n = x.shape[0]
    tile, slices = _tiles(n, x.shape[1], _group_bytes(q, d, 1 if factored else 2), q.shape[0], l2, threads)
    for s in prange(slices):
        wbuf, cbuf = _task_start(CONFIG)
        g0, g1 = slice_bounds(s, slices, q.shape[0])
        for t0 in range(0, n, tile):
            for g in range(g0, g1):
                _q4_group(q[g], d[g], m[g], factored, g, xa, rs, bs, xd, xs, out, t0, min(n, t0 + tile), levels, wbuf, cbuf)
        release_tiles()


@njit(inline="always")
def _int8_group(qg, dg, sg, g, xa, rs, bs, xd, out, t0, t1, levels, wbuf, cbuf, bias, halves):
    """Group g of a q8 matrix (``bias`` 128: q + 128 bytes) or a packed q5 one (16: q + 16 in 5 bits) . x[t]
    into out[t], rows t0..t1; with ``halves`` a q6 one (128: q8's bytes; 32: packed in 6 bits): two half-block
    products, each times its int8 scale, then the super-block scale."""
    acc = np.zeros((t1 - t0) * ROWS, np.float32)
    per_sup = dg.shape[0] // (2 * sg.shape[0])  # q6's 32-blocks per super block
    nb, region = xd.shape[2], (1 + halves) * CHUNK_ROWS * ROWS
    blocks = CHUNK_BLOCKS if (t1 - t0) * levels <= FEW_ROWS else 1
    for b0 in range(0, nb, blocks):
        for r0 in range(t0 * levels, t1 * levels, CHUNK_ROWS):
            r1 = min(t1 * levels, r0 + CHUNK_ROWS)
            for b in range(b0, min(nb, b0 + blocks)):
                if bias == 128:
                    w0, w1, w2, w3, w4, w5, w6, w7 = _int8_block(qg, b * 8 * 64)
                elif bias == 32:
                    w0, w1, w2, w3, w4, w5, w6, w7 = _q6_packed_block(qg, b * Q6_PACKED)
                else:
                    w0, w1, w2, w3, w4, w5, w6, w7 = _q5_packed_block(qg, b * Q5_PACKED)
                _store_signed(wbuf, bias, w0, w1, w2, w3, w4, w5, w6, w7)
                tile_load(0, wbuf, 0, 64)
                if halves:
                    tile_load(7, wbuf, 4 * 64, 64)
                    _half_products(xa, rs, bs, r0, r1, b, cbuf, (b - b0) * region)
                else:
                    _products(xa, rs, bs, r0, r1, b, cbuf, (b - b0) * region, True)
            for b in range(b0, min(nb, b0 + blocks)):
                scale, s_lo, s_hi = _block_scales(dg, sg, b, per_sup)
                for t in _rows_of(r0, t1, levels):
                    i1, i2 = _level_ints(cbuf, r0, t, levels, (b - b0) * region)
                    if halves:
                        hi1, hi2 = _level_ints(cbuf, r0, t, levels, (b - b0) * region + CHUNK_ROWS * ROWS)
                        i1, i2 = q6_scaled(i1, hi1, s_lo, s_hi), q6_scaled(i2, hi2, s_lo, s_hi)
                    scaled_row_step(acc, t, t0, i1, i2, scale, xd, b, levels)
    _store_rows(acc, out, t0, t1, g, out.shape[1])


def _block_scales(dg, sg, b, per_sup):
    """Block b's f32 scale per row, and q6's int8 scales of its halves (typed per layout below)."""


@overload(_block_scales, inline="always")
def _block_scales_of(dg, sg, b, per_sup):
    if dg.dtype == types.uint16:  # q8 / q5: f16 bits per 32 values
        return lambda dg, sg, b, per_sup: (load_f32(dg, b * ROWS), zeros_i32(), zeros_i32())
    return lambda dg, sg, b, per_sup: (load_f32(sg, b // per_sup * ROWS), load_i8_i32(dg, 2 * b * ROWS),
                                       load_i8_i32(dg, (2 * b + 1) * ROWS))  # q6: int8 per 16, f32 per super block


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def int8_matmul(q, d, x, out, sup, l2, threads, levels, bias, halves):
    """matmul_i8.int8_matmul's q8 (``bias`` 128) and q5_packed_matmul (16) on tiles; with ``halves``
    int8_matmul's q6 (128) and q6_packed_matmul (32)."""
    literally(levels)
    literally(bias)
    literally(halves)
    xq, xd, _, _ = padded_levels(x, levels, 2 * TILE_ROWS)
    xa, rs, bs = _activations(xq, levels)
    n = x.shape[0]
    tile, slices = _tiles(n, x.shape[1], _group_bytes(q, d, 1), q.shape[0], l2, threads)
    for s in prange(slices):
        wbuf, cbuf = _task_start(CONFIG_Q6 if halves else CONFIG)
        g0, g1 = slice_bounds(s, slices, q.shape[0])
        for t0 in range(0, n, tile):
            for g in range(g0, g1):
                _int8_group(q[g], d[g], group_part(sup, g), g, xa, rs, bs, xd, out, t0, min(n, t0 + tile), levels, wbuf,
                            cbuf, bias, halves)
        release_tiles()


# -- the products as callers use them (matmul_i8's "products as callers use them" says why); the same
# arguments as matmul_i8's, so products.py calls either (q8's ``sup`` is None) ---------------------------
@njit(cache=True)
def q4_product(q, d, m, x, out, l2, threads, levels):
    if levels == 1:
        q4_matmul(q, d, m, x, out, l2, threads, 1, False)
    else:
        q4_matmul(q, d, m, x, out, l2, threads, 2, False)


@njit(cache=True)
def q4k_product(q, ks, x, out, l2, threads, levels):
    if levels == 1:
        q4_matmul(q, ks, ks, x, out, l2, threads, 1, True)
    else:
        q4_matmul(q, ks, ks, x, out, l2, threads, 2, True)


@njit(cache=True)
def q8_product(q, d, x, out, sup, l2, threads, levels):
    # ``d`` stands in for q6's super-block scales (None here): the kernel types the q6 branches too
    if levels == 1:
        int8_matmul(q, d, x, out, d, l2, threads, 1, 128, False)
    else:
        int8_matmul(q, d, x, out, d, l2, threads, 2, 128, False)


@njit(cache=True)
def q5_packed_product(q, d, x, out, l2, threads, levels):
    if levels == 1:
        int8_matmul(q, d, x, out, d, l2, threads, 1, 16, False)  # ``d``: as q8_product's
    else:
        int8_matmul(q, d, x, out, d, l2, threads, 2, 16, False)


@njit(cache=True)
def q6_product(q, d, x, out, sup, l2, threads, levels):
    if levels == 1:
        int8_matmul(q, d, x, out, sup, l2, threads, 1, 128, True)
    else:
        int8_matmul(q, d, x, out, sup, l2, threads, 2, 128, True)


@njit(cache=True)
def q6_packed_product(q, d, x, out, sup, l2, threads, levels):
    if levels == 1:
        int8_matmul(q, d, x, out, sup, l2, threads, 1, 32, True)
    else:
        int8_matmul(q, d, x, out, sup, l2, threads, 2, 32, True)
