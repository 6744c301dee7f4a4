"""Matrix products on AMX-BF16 tiles (the ``amx-bf16`` variant's prompt products): matmul_i8's layouts,
dequantized to bf16 once per call and multiplied by bf16 activations with f32 accumulation.

Why.  The ``amx`` variant's int8 tile products are exact per 32-value block, so each block's int32 C tile
is stored and rescaled into f32 by the epilogue: ~10 instructions per row and block, and the tile unit idles
(~4% of its int8 peak).  ``tdpbf16ps`` accumulates f32 in the C tile across the whole K: a panel of output
columns is dequantized to bf16 once (into L2), every row tile of the prompt runs through it, and each C
tile is stored once.

Precision: ``split``.  With x and w each rounded to bf16 (8 significant bits, error <= 2^-9 of the value)
gemma3's KL to the float64 forward was 2.5e-4 (amx: 4.8e-7; scripts/levels_f64.py gemma3-270m 48, f16 KV,
bench-results/s14-bf14/kl-gemma3-amx-vs-bf16.json).  Split, x ~ x_hi + x_lo and w ~ w_hi + w_lo (the
remainder after bf16 rounding, itself in bf16: ~16 significant bits), and three tile products a block
(hi hi, hi lo, lo hi; lo lo is ~2^-18 of the sum): KL 3.1e-7 (kl-gemma3-amx-vs-bf16x3.json), the largest
error on random matrices 4e-6 of the largest output against amx's 2e-5, for 3x the tile work and twice the
dequantization (quiet, 256 rows: 1.96x amx's speed on q4 17920x1536, 1.98x on q8 4096x640; one term 4.3x
and 3.6x: bench-results/s14-bf14/ab2-*.jsonl).

The two-term middles (x split: + x_lo w_hi, w's bf16 rounding kept; w split: + x_hi w_lo; measured with
bench-results/s15-p15/terms.patch, not merged: docs/benchmarks.md) miss 2e-5 (bulk path, 48 tokens, f16 KV,
bench-results/s15-p15/kl-*-terms.json): KL 1 / 2x / 2w / 3 terms gemma3 1.9e-4
/ 6.7e-5 / 8.6e-5 / 3.2e-7, Qwen 0.5B 8.2e-5 / 5.4e-5 / 4.6e-5 / 4.7e-6, SmolLM2 3.5e-4 / 9.6e-5 / 3.3e-4 /
3.8e-6: each operand's rounding costs about as much as the other's (SmolLM2's activations more), so only
both split stay near amx.  Speed at 459 rows against three terms (quiet, ab-terms-1.jsonl): 2w 1.45-1.88x,
2x only 1.15-1.30x (x's remainders double the A tiles read from L2 a block, w's come from the panel's
copy), one term 2.0-2.4x; Qwen 1.5B's prompt 210 / 236 / 269 / 353 tok/s for 3 / 2x / 2w / 1 (llama.cpp's
~158 in the same runs, gen-qwen15-t*-a.json).

Each output is its row's: no value of another row of the call enters it, and cutting K into chunks (C
tiles stored to ``out`` and reloaded: exact f32) keeps the order of the sums, so a row's bits do not depend
on the call's rows, threads or chunks (tests/test_native_bf16.py).  They are not vnni's bits.

Layout.  A bf16 B tile is 16 rows (pairs of K values) x 16 columns x 2 bf16 = 1024 bytes for 32 K
values: lane r of a row holds output row r's two consecutive weights, which is matmul_i8's operand
arrangement (lane r = 4 consecutive K of row r) cut in two: amx.store_bf16_operand turns each of a
block's 8 operands into two B rows, lane-wise (byte -> f32, times the block's scale plus its offset,
rounded to bf16).  The activations are converted to bf16 block-major one K chunk at a time ((1 + split,
blocks, rows, 32): an A tile, 16 rows x 32 values, is 1024 contiguous bytes), 16 lanes at once
(amx.store_bf16_split), into a buffer the chunk's panels then read from L2.  Converting all of x up front wrote
a hi + lo copy as large as x (9.2 MB for a 256-row FFN chunk of Qwen 1.5B's down, K = 8960), fresh pages
every call, that the chunks read back from memory, and its scalar loop took 2.1 ms of that product's ~12
(now 0.8).  Quiet in-process A/B at 256 rows (bench-results/s15-k15/ab6.jsonl, same bits): down q4
1536x8960 0.87x the time, q6 0.66x, gate_up q4 17920x1536 0.98x, o q4 1536x1536 0.91x, gemma3's q8 4096x640
0.93x.  Tried and dropped: running every row pair through 8 (or 4) blocks of the panel before the next ones,
so the B tiles stay in L1, cost 1.08-1.19x the time (the C tiles' extra trips through ``out``; ab1.jsonl).

Overlap.  Each thread dequantizes the next panel between this panel's blocks of tile products (two panel
buffers), so the core's vector work runs while the tile unit multiplies: quiet in-process A/B against the
dequantization up front (bench-results/s16-k16/ab3.jsonl, ab4.jsonl, same bits) 0.76-0.95x the time on Qwen
1.5B's products at 256 rows, 0.88-0.98x at 459; whole prompt, paired: gemma3 1538 -> 1757 tok/s, Qwen 1.5B
181 -> 216, 204 -> 207, 200 -> 208 (genab-*.json).  It costs ~8 s of compile a layout on a cold cache (15
-> 24 s: compile1.jsonl).
"""
from __future__ import annotations

import numpy as np
from numba import literally, njit, prange, types
from numba.extending import overload

from ... import numba_setup  # noqa: F401
from ...kernels import amx
from ...kernels.amx import dot_bf16, load_config, release_tiles, store_bf16_operand, store_bf16_split, \
    tile_load, tile_store, tile_zero
from ...kernels.simd import high_nibbles, load_bytes, load_f32, load_i32, load_i8_i32, low_nibbles, mul_f32, \
    prefetch, splat_f32, to_f32
from .matmul import QK
from .matmul_i8 import (PREFETCH_BYTES, Q4K_BLOCKS, Q4K_SCALES, Q5_PACKED, Q6_PACKED, _int8_block,
                        _q5_packed_block, _q6_packed_block, q4k_block_scales)
from .row_tiles import slice_bounds

#: rows of an A / C tile; bytes of a B (or A) tile: 32 K values of 16 rows in bf16
TILE_ROWS, TILE_BYTES = 16, 1024
#: tiles 0-1 the activations (A) of two row tiles, 2-3 the weights (B) of two 16-column groups, 4-7 the four
#: products (C, f32)
CONFIG = amx.tile_config(((TILE_ROWS, 64),) * 8)
#: bytes of activations (one K chunk of every row) kept in L2 while the panels stream through them
A_CHUNK_BYTES = 1 << 20
#: layouts (the kernels' literal ``kind``)
Q4, Q4K, Q8, Q5P, Q6, Q6P = 0, 1, 2, 3, 4, 5


@njit(inline="always")
def _bf16_block(x, xa, b, j, n, n_pad, split):
    """Block b (columns 32 b..32 b + 31) of every row of x -> xa[0, j] (rows, 32) bf16 bits rounded to nearest
    even, rows n.. zero; with ``split`` xa[1, j] the remainders x - bf16(x) in bf16: x ~ hi + lo to ~16 bits."""
    lo = xa.shape[1] * n_pad * QK if split else 0
    o = j * n_pad * QK
    for t in range(n):
        store_bf16_split(xa, o + t * QK, x, (t * x.shape[1] + b * QK), lo)
        store_bf16_split(xa, o + t * QK + 16, x, (t * x.shape[1] + b * QK + 16), lo)
    for t in range(n, n_pad):
        for i in range(QK):
            xa[0, j, t, i] = 0
            if split:
                xa[1, j, t, i] = 0


@njit(inline="always")
def _store_block(wb, o, split, s_lo, m_lo, s_hi, m_hi, w0, w1, w2, w3, w4, w5, w6, w7):
    """A block's 8 operands (columns 4 s..4 s + 3) as one bf16 B tile at byte o (``split``: and the
    remainders' tile after it); operands 0-3 (columns 0-15) take scale s_lo and offset m_lo, 4-7 s_hi and
    m_hi (q6's half blocks; the others pass the same twice)."""
    lo = TILE_BYTES * split  # not a conditional expression: its phi, inlined into _panel, upset numba's IR checks
    store_bf16_operand(wb, o, w0, s_lo, m_lo, lo)
    store_bf16_operand(wb, o + 128, w1, s_lo, m_lo, lo)
    store_bf16_operand(wb, o + 256, w2, s_lo, m_lo, lo)
    store_bf16_operand(wb, o + 384, w3, s_lo, m_lo, lo)
    store_bf16_operand(wb, o + 512, w4, s_hi, m_hi, lo)
    store_bf16_operand(wb, o + 640, w5, s_hi, m_hi, lo)
    store_bf16_operand(wb, o + 768, w6, s_hi, m_hi, lo)
    store_bf16_operand(wb, o + 896, w7, s_hi, m_hi, lo)


def _dequant(kind, qg, dg, mg, b, wb, o, split):
    """Block b of a group (weights qg, scales dg, then q4's offsets / q6's super-block scales mg) as a bf16 B
    tile at byte o of wb (typed per layout below: each reads its own scales)."""


@njit(inline="always")
def _q4_block(qg, dg, mg, b, wb, o, split, factored):
    qo = b * 4 * 64
    for line in range(4):
        prefetch(qg, qo + PREFETCH_BYTES + line * 64)
    w0, w1 = load_bytes(qg, qo), load_bytes(qg, qo + 64)
    w2, w3 = load_bytes(qg, qo + 128), load_bytes(qg, qo + 192)
    if factored:  # Q4_K: the block's scale and offset from its super block's factors
        s, h, k = b // Q4K_BLOCKS, b % Q4K_BLOCKS // 4, b % 4
        so = s * Q4K_SCALES
        dv, mv = q4k_block_scales(load_i32(dg, so + 32 * h), load_i32(dg, so + 64), load_f32(dg, so + 96),
                                  load_f32(dg, so + 112), h, k)
    else:
        dv, mv = load_f32(dg, b * 16), load_f32(mg, b * 16)
    _store_block(wb, o, split, dv, mv, dv, mv, low_nibbles(w0), low_nibbles(w1), low_nibbles(w2), low_nibbles(w3),
                 high_nibbles(w0), high_nibbles(w1), high_nibbles(w2), high_nibbles(w3))


@njit(inline="always")
def _byte_operands(qg, b, kind):
    """Block b's 8 operands of a q8 / q6 (bytes q + 128), packed q5 (q + 16) or packed q6 (q + 32) group."""
    if kind == Q5P:
        return _q5_packed_block(qg, b * Q5_PACKED)
    if kind == Q6P:
        return _q6_packed_block(qg, b * Q6_PACKED)
    return _int8_block(qg, b * 8 * 64)


@njit(inline="always")
def _bias(kind):
    """Minus the bias of _byte_operands' bytes."""
    return np.float32(-16.0 if kind == Q5P else -32.0 if kind == Q6P else -128.0)


@njit(inline="always")
def _int8_block_bf16(qg, dg, b, wb, o, split, kind):
    """q8 (bytes q + 128) or packed q5 (q + 16)."""
    w0, w1, w2, w3, w4, w5, w6, w7 = _byte_operands(qg, b, kind)
    bias = _bias(kind)
    dv = load_f32(dg, b * 16)
    mv = mul_f32(dv, splat_f32(bias))
    _store_block(wb, o, split, dv, mv, dv, mv, w0, w1, w2, w3, w4, w5, w6, w7)


@njit(inline="always")
def _q6_block(qg, dg, sg, b, wb, o, split, kind):
    """q6 (bytes q + 128, or packed q + 32): an int8 scale per 16 values times the super block's f32."""
    w0, w1, w2, w3, w4, w5, w6, w7 = _byte_operands(qg, b, kind)
    bias = _bias(kind)
    per_sup = dg.shape[0] // (2 * sg.shape[0])
    sup = load_f32(sg, b // per_sup * 16)
    s_lo = mul_f32(sup, to_f32(load_i8_i32(dg, 2 * b * 16)))
    s_hi = mul_f32(sup, to_f32(load_i8_i32(dg, (2 * b + 1) * 16)))
    _store_block(wb, o, split, s_lo, mul_f32(s_lo, splat_f32(bias)), s_hi, mul_f32(s_hi, splat_f32(bias)),
                 w0, w1, w2, w3, w4, w5, w6, w7)


@overload(_dequant, inline="always")
def _dequant_of(kind, qg, dg, mg, b, wb, o, split):
    if not isinstance(kind, types.IntegerLiteral):
        return None
    k = kind.literal_value
    if k in (Q4, Q4K):
        factored = k == Q4K
        return lambda kind, qg, dg, mg, b, wb, o, split: _q4_block(qg, dg, mg, b, wb, o, split, factored)
    if k in (Q8, Q5P):
        return lambda kind, qg, dg, mg, b, wb, o, split: _int8_block_bf16(qg, dg, b, wb, o, split, k)
    return lambda kind, qg, dg, mg, b, wb, o, split: _q6_block(qg, dg, mg, b, wb, o, split, k)


@njit(inline="always")
def _c_place(out, tail, r, n, col):
    """Where C tile rows r..r + 16 at column col go: ``out`` when they are all rows of x, else ``tail`` (the
    last, partial row tile)."""
    if r + TILE_ROWS <= n:
        return out, r * out.shape[1] + col
    return tail, col


@njit(inline="always")
def _dot_pair(c0, c1, b, pair):
    """C tile c0 += A tile 0 times B tile b, and (``pair``) c1 += A tile 1 times b."""
    dot_bf16(c0, 0, b)
    if pair:
        dot_bf16(c1, 1, b)


@njit(inline="always")
def _dots(two, pair):
    """The products of the A tiles (0, 1) and B tiles (2, 3) loaded, into C tiles 4-7."""
    _dot_pair(4, 6, 2, pair)
    if two:
        _dot_pair(5, 7, 3, pair)


@njit(inline="always")
def _block_rest(xa, wb, ao0, ao1, wo0, wo1, two, pair):
    """A block's hi * lo and lo * hi products after _dots' hi * hi, in 5 tile loads where reloading both B hi
    tiles took 6: the B remainders go over B hi 3 (reloaded last), and each C tile still sums hi hi, hi lo,
    lo hi in that order, so the bits do not change."""
    tile_load(3, wb, wo0 + TILE_BYTES, 64)
    _dot_pair(4, 6, 3, pair)
    if two:
        tile_load(3, wb, wo1 + TILE_BYTES, 64)
        _dot_pair(5, 7, 3, pair)
    _load_pair(0, 1, xa, ao0, ao1, pair)
    _dot_pair(4, 6, 2, pair)
    if two:
        tile_load(3, wb, wo1, 64)
        _dot_pair(5, 7, 3, pair)


@njit(inline="always")
def _load_pair(t, u, arr, o0, o1, second):
    """Tiles t (at o0) and u (at o1, when ``second``) of 1024 contiguous bytes."""
    tile_load(t, arr, o0, 64)
    if second:
        tile_load(u, arr, o1, 64)


@njit(inline="always")
def _c_tile(t, store, arr, o, stride):
    if store:
        tile_store(t, arr, o, stride)
    else:
        tile_load(t, arr, o, stride)


@njit(inline="always")
def _c_tiles(store, a0, o0, a1, o1, stride, two, pair):
    """The C tiles 4-7 in use, from (``store``: to) their rows of ``out`` / ``tail`` (_c_place)."""
    _c_tile(4, store, a0, o0, stride)
    if two:
        _c_tile(5, store, a0, o0 + 16, stride)
    if pair:
        _c_tile(6, store, a1, o1, stride)
        if two:
            _c_tile(7, store, a1, o1 + 16, stride)


@njit(inline="always")
def _panel(xa, wb, cur, out, tail, n, n_pad, g0, two, b0, b1, split, kind, q, d, m, nxt, gn, dn):
    """Output columns of groups g0 (and g0 + 1 when ``two``) of every row, over blocks b0..b1 (xa's K chunk):
    C tiles zeroed at block 0, else reloaded from the previous K chunk's; stored once.  ``split``: x ~ hi + lo
    and w ~ hi + lo, three products per block (hi hi, hi lo, lo hi; lo lo is below the f32 sums' rounding).
    The panel's B tiles are at byte ``cur`` of wb; between its blocks the next panel's dn blocks (groups gn, gn + 1)
    are dequantized to byte ``nxt``, spread evenly over the blocks' steps, so that the core's vector work runs
    while the tile unit multiplies."""
    stride, kc, wt = 4 * out.shape[1], b1 - b0, (1 + split) * TILE_BYTES
    steps, acc, j = -(-n_pad // (2 * TILE_ROWS)) * kc, 0, 0
    lo_a = xa.shape[1] * n_pad * QK  # elements from an A tile to its remainders'
    for r in range(0, n_pad, 2 * TILE_ROWS):
        pair = r + TILE_ROWS < n_pad
        a0, o0 = _c_place(out, tail, r, n, g0 * 16)
        a1, o1 = _c_place(out, tail, r + TILE_ROWS, n, g0 * 16)
        if b0 == 0:
            tile_zero(4)
            tile_zero(5)
            tile_zero(6)
            tile_zero(7)
        else:
            _c_tiles(False, a0, o0, a1, o1, stride, two, pair)
        for b in range(b0, b1):
            xo, wo = ((b - b0) * n_pad + r) * QK, cur + (b - b0) * wt
            _load_pair(0, 1, xa, xo, xo + TILE_ROWS * QK, pair)
            _load_pair(2, 3, wb, wo, wo + kc * wt, two)
            _dots(two, pair)
            if split:
                _block_rest(xa, wb, lo_a + xo, lo_a + xo + TILE_ROWS * QK, wo, wo + kc * wt, two, pair)
            acc += dn
            for _ in range(acc // steps):
                g = gn + j // kc
                _dequant(kind, q[g], d[g], m[g], b0 + j % kc, wb, nxt + j * wt, split)
                j += 1
            acc %= steps
        _c_tiles(True, a0, o0, a1, o1, stride, two, pair)


@njit(cache=True)
def _target(out, cols):
    """``out``, or a (rows, cols) array when its rows do not fill the last group (C tiles are 16 wide)."""
    if out.shape[1] == cols:
        return out
    return np.empty((out.shape[0], cols), np.float32)


@njit(cache=True)
def _copy_back(out, dst):
    """The columns of ``out`` from _target's array."""
    if dst.shape[1] != out.shape[1]:
        for t in range(out.shape[0]):
            for c in range(out.shape[1]):
                out[t, c] = dst[t, c]


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def bf16_matmul(q, d, m, x, out, threads, kind, split):
    """out[t, r] = W[r] . x[t] (``out`` as wide as the groups: _target) for a matrix of layout ``kind`` (matmul_i8's parts: q, d, then ``m`` q4's
    offsets or q6's super-block scales, for the other layouts ``d`` again), on
    bf16 tiles.  Threads take panels of 2 groups (32 output columns); K is cut in chunks so that a chunk of
    every row's activations stays in L2 while the panels pass."""
    literally(kind)
    literally(split)
    n, cols = x.shape
    nb, groups = cols // QK, q.shape[0]
    n_pad = -(-n // TILE_ROWS) * TILE_ROWS
    tail = np.empty((TILE_ROWS, out.shape[1]), np.float32)
    si = 1 if split else 0
    chunks = -(-nb * n_pad * 64 * (1 + si) // A_CHUNK_BYTES)
    kc = -(-nb // chunks)
    xa = np.empty((1 + si, kc, n_pad, QK), np.uint16)  # one K chunk of the activations
    panels = (groups + 1) // 2
    slices = min(panels, 4 * max(1, threads))
    for b0 in range(0, nb, kc):
        b1 = min(nb, b0 + kc)
        for b in prange(b0, b1):
            _bf16_block(x, xa, b, b - b0, n, n_pad, split)
        for s in prange(slices):
            load_config(CONFIG)
            kb, wt = b1 - b0, (1 + split) * TILE_BYTES
            half = 2 * kb * wt
            wb = np.empty(2 * half, np.uint8)  # two panels' B tiles: this one's and the next's
            p0, p1 = slice_bounds(s, slices, panels)
            for j in range(min(2 * p0 + 2, groups) * kb - 2 * p0 * kb):
                g = 2 * p0 + j // kb
                _dequant(kind, q[g], d[g], m[g], b0 + j % kb, wb, j * wt, split)
            for p in range(p0, p1):
                g0 = 2 * p
                two = g0 + 1 < groups
                cur = (p - p0) % 2 * half
                dn = (min(g0 + 4, groups) - g0 - 2) * kb if p + 1 < p1 else 0
                _panel(xa, wb, cur, out, tail, n, n_pad, g0, two, b0, b1, split, kind, q, d, m, half - cur, g0 + 2,
                       dn)
            release_tiles()
    r = n_pad - TILE_ROWS
    if r < n < n_pad:
        out[r:n] = tail[:n - r]


# -- the products as callers use them: the layout a compile-time constant (``literally``), chosen here in
# compiled code (from Python each call would go through the dispatcher's literal retyping: ~100 ms);
# ``split`` made a literal the same way -----------------------------------------------------------------------
@njit(inline="always")
def _product(q, d, m, x, out, threads, kind, split):
    dst = _target(out, q.shape[0] * 16)
    if split:
        bf16_matmul(q, d, m, x, dst, threads, kind, True)
    else:
        bf16_matmul(q, d, m, x, dst, threads, kind, False)
    _copy_back(out, dst)


@njit(cache=True)
def q4_product(q, d, m, x, out, threads, split):
    _product(q, d, m, x, out, threads, Q4, split)


@njit(cache=True)
def q4k_product(q, ks, x, out, threads, split):
    _product(q, ks, ks, x, out, threads, Q4K, split)


@njit(cache=True)
def q8_product(q, d, x, out, threads, split):
    _product(q, d, d, x, out, threads, Q8, split)


@njit(cache=True)
def q5_packed_product(q, d, x, out, threads, split):
    _product(q, d, d, x, out, threads, Q5P, split)


@njit(cache=True)
def q6_product(q, d, x, out, sup, threads, split):
    _product(q, d, sup, x, out, threads, Q6, split)


@njit(cache=True)
def q6_packed_product(q, d, x, out, sup, threads, split):
    _product(q, d, sup, x, out, threads, Q6P, split)
