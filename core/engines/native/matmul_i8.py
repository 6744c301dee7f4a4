"""Matrix products on AVX-512 VNNI with activations as two int8 levels (the ``vnni`` variant):
out[t, r] = W[r] . x[t].

Why.  The f32 kernels of matmul.py run at ~70% of this CPU's f32 multiply-add peak once a batch has a few
rows, so continuous batching cannot go faster with them.  ``vpdpbusd`` does 64 int8 multiply-adds per
instruction (4x the f32 rate), exactly.  Each row of x is split per 32-value block into two int8 levels
(``quantize_rows``): x ~ d1 q1 + d2 q2, where q1 is x rounded to 8 bits (llama.cpp's Q8 activations) and
q2 the rounding error of q1 in steps d2 = d1 / 254, so x is kept to ~16 bits.  Both levels' block products
are integer and exact; the f32 scales are applied once per block.

Why two levels.  With one (as llama.cpp), the engine is ~8 bits accurate (KL 0.003 to the f32 engine on
smollm2), and worse, it amplifies any other small change: a rounding step flips somewhere, the next layer
sees a different 8-bit value, and so on.  Comparing the paged q8 KV cache with the f32 one measured the
activation rounding rather than the cache (KL 0.0053, top-1 0.963 on smollm2 against 0.00017 / 0.997
through the f32 kernels).  The second level costs 8 more ``vpdpbusd`` per block and token, on weights
already in registers.  The ``vnni-q8`` variant (and ``vnni-q8ffn``, for the gate|up products only) runs the
same kernels with one level, to measure what that work costs: ``levels`` is a compile-time constant of each
kernel, so one level has neither the second level's quantization nor its dots and scaling.

Layout (converted at load; groups of ``ROWS`` = 16 output rows, one int32 lane each):
  q4: ``q`` uint8, group g: [block b][step s < 4][row r][i < 4] = byte 4 s + i of row r's block b in the
      GGUF Q4 packing: its low nibbles are columns 4 s + i, its high nibbles columns 16 + 4 s + i, so one
      64-byte load gives two 16-row x 4-column operands of ``vpdpbusd``.  ``d``, ``m`` [block][row], f16
      bits (uint16) when every value stays a normal f16 (see _compact), else f32.
      W = q * d + m; the m term uses the sums of x's rounded blocks (see quantize_rows).
      Q4_K (a matrix of Q4_K tensors only, layout_q4k): ``q`` as above; ``ks`` uint16, group g: per 256-value
      super block ``Q4K_SCALES`` elements (256 bytes, four cache lines): the file's 6-bit scales and mins of
      its 8 blocks in three planes of 16 uint32 words [plane][row], then the super block's f16 ``dd`` [row]
      and its ``dmin`` negated [row].  Plane 0 holds blocks 0-3, plane 1 blocks 4-7: block k's low 4 bits
      of the scale at bits 4 (k % 4), of the min at 16 + 4 (k % 4); plane 2 the top 2 bits, the scale's at
      bits (4 + 2 k) % 32, the min's at (20 + 2 k) % 32, so one rotation right by 2 k puts both at bits 4-5
      and 20-21 of their lane: a block's scale and min come out of 5 integer operations as
      scale | min << 16.  d = sc * dd and m = mn * dmin, both exact in f32, are rebuilt per block.
      4.5 bits/weight read, the file's own (q4's is 5): 16 rows' block is 256 bytes of values, and an
      eighth of the super block's 256 of scales.
  q6: ``q`` as q8's; ``d`` int8 [16-value block][row] (Q6_K's sub-block scales): a block's first 4 operands
      are columns 0-15, the last 4 columns 16-31, so each half gets its own scale; ``sup`` f32 [256-value
      block][row] (Q6_K's super-block scale; per 32 values where a 32-block type joins it, see dequant.to_q6).
      A block's two half products are scaled by their int8 scales and summed in int32 (exact: at most
      2 * 16 * 32 * 127 * 128 < 2**24, so also exact in f32), then one f32 multiply-add per level.
      Packed (when every value fits 6 bits, as Q6_K's do): ``q`` holds q + 32 in 6 bits, ``Q6_PACKED`` bytes
      a block: 4 x 64 bytes [step s < 4][row r][i < 4] whose low nibbles are the low 4 bits of column
      4 s + i and high nibbles those of column 16 + 4 s + i (q4's arrangement), then 2 x 64 bytes [half h]
      [row r][i < 4] holding the top 2 bits of column 16 h + 4 k + i at bits 2k-2k+1, k < 4.  The kernel
      rebuilds the same 8 operands (6.6 bits/weight read instead of 8.6: these matrices stream from memory
      once per token); the extra 32 * sum(x) comes back out as q8's 128 * sum(x) does.
  q8: ``q`` uint8, group g: [block b][step s < 8][row r][i < 4] = column 4 s + i.  ``d`` f16 bits
      [block][row].  ``q`` holds q + 128 as unsigned bytes: ``vpdpbusd`` multiplies unsigned by signed bytes, and with
      the weights unsigned the activations can be the instruction's memory operand (a broadcast word);
      the extra 128 * sum(x) of each block comes back out from the activations' integer sums (exact).
      The alternative, x + 128 against signed weights, needs a per-block weight sum in memory: 1 more bit
      read per weight.
      Packed (when every value fits 5 bits, as Q5_0's do): ``q`` holds q + 16 in 5 bits, ``Q5_PACKED`` bytes
      a block: q4's 4 x 64 bytes of low nibbles, then 64 bytes [row r][i < 4] whose bit k is the fifth bit
      of operand k (k < 4: column 4 k + i, else 16 + 4 (k - 4) + i).  5.5 bits/weight read instead of 8.5
      (the 0.5B's FFN and attention matrices are Q5_0); the block integers are the 8-bit layout's exactly,
      the extra 16 * sum(x) taken back out, so the results are identical to it.
Rows are padded with zeros to a multiple of ROWS; the padding is never written to the output.
Activations (made by the products from x, see quantize_rows): ``xq`` (n, levels, cols) signed bytes (level 1,
level 2), ``xd`` (n, levels, cols / 32) f32 their steps, ``xi`` their integer block sums, ``xs`` (n, cols / 32)
f32 the sums of the rounded blocks.

The ``amx`` variant (matmul_amx.py) runs products of many rows on AMX tiles over these layouts: a block's 8
operands are an AMX weight tile as they lie, and it shares the per-row epilogues below (q4_row_step,
scaled_row_step, q6_scaled, q4k_block_scales), so its outputs are these kernels' bit for bit.

Batch invariance holds as in matmul.py: a row of x goes through the same instructions whatever the batch,
so k tokens at once give bit-identical results to one at a time.  The group's weights are loaded and
unpacked once per block and used by every row of the batch from registers.
"""
from __future__ import annotations

import numpy as np
from numba import literally, njit, prange, types, uint64
from numba.extending import overload

from ... import numba_setup  # noqa: F401
from .matmul import QK, group_part
from .row_tiles import row_tiles, slice_bounds
from ...kernels.simd import (abs_f32, add_i32, and_i32, bit_four0, bit_four1, bit_four2, bit_four3, bit_four4,
                              bit_four5, bit_four6, bit_four7, bit_pair0, bit_pair1, bit_pair2, bit_pair3,
                              broadcast_word, dot_u8s8, fma_f32, high_nibbles, hmax_f32, hsum_i32, load_bytes,
                              load_f32, load_i32, load_i8_i32, low_nibbles, max_f32, min_f32, mul_f32, mul_i32,
                              or_bytes, or_i32, prefetch, rint_f32, rotate_right_i32, shift_right_i32, splat_f32,
                              splat_i32, store_f32, store_low_bytes, sub_i32, to_f32, to_i32, zeros_i32)

#: output rows per group: the 16 int32 lanes of one zmm register
ROWS = 16


# -- layout conversion (at load) ---------------------------------------------------------------------------
def _pad_rows(a: np.ndarray) -> np.ndarray:
    extra = -a.shape[0] % ROWS
    return a if extra == 0 else np.concatenate([a, np.zeros((extra,) + a.shape[1:], a.dtype)])


def _per_block(a: np.ndarray, ng: int, nb: int) -> np.ndarray:
    """(rows, nb) -> (groups, nb * ROWS): [block][row] inside a group."""
    return np.ascontiguousarray(a.reshape(ng, ROWS, nb).transpose(0, 2, 1).reshape(ng, -1))


def _compact(a: np.ndarray) -> np.ndarray:
    """Block scales or offsets as f16 bits (uint16), which the kernels read in half the bytes, when every
    value survives as a normal f16: exactly for Q4_0 / Q4_1 (f16 in the file); Q4_K's products of an f16
    scale and a 6-bit factor are rounded, by at most 2^-11 relative, i.e. a weight moves by at most
    1/270 of its 4-bit step.  Otherwise (tiny or huge values) they stay f32."""
    half = a.astype(np.float16)
    back = half.astype(np.float32)
    nonzero = a != 0
    ok = np.all(np.abs(back[nonzero] - a[nonzero]) <= np.abs(a[nonzero]) * 2.0 ** -11) and \
        np.all(np.abs(a[nonzero]) >= np.finfo(np.float16).tiny) and np.all(np.isfinite(back))
    return half.view(np.uint16) if ok else a


def layout_q4(packed: np.ndarray, scale: np.ndarray, offset: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-major q4 (rows, cols/2) uint8, (rows, cols/32) f32 scale and offset -> (q, d, m)."""
    nb = packed.shape[1] * 2 // QK
    packed, scale, offset = _pad_rows(packed), _pad_rows(scale), _pad_rows(offset)
    ng = packed.shape[0] // ROWS
    q = packed.reshape(ng, ROWS, nb, 4, 4).transpose(0, 2, 3, 1, 4).reshape(ng, -1)
    return (np.ascontiguousarray(q), _per_block(_compact(scale.astype(np.float32)), ng, nb),
            _per_block(_compact(offset.astype(np.float32)), ng, nb))


#: uint16 elements of one group's scales per Q4_K super block (layout_q4k): three planes of 16 uint32 scale
#: words, 16 f16 ``dd``, 16 f16 ``-dmin``
Q4K_SCALES = 128
#: Q4_K blocks of 32 values per super block
Q4K_BLOCKS = 8


def _q4k_words(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """(rows, blocks) 6-bit scales and mins -> (rows, super blocks, 3) uint32: the module doc's planes."""
    s, m = (a.reshape(a.shape[0], -1, Q4K_BLOCKS).astype(np.uint32) for a in (sc, mn))
    words = np.zeros(s.shape[:2] + (3,), np.uint32)
    for k in range(Q4K_BLOCKS):
        low = 4 * (k % 4)
        words[..., k // 4] |= ((s[..., k] & 15) << low) | ((m[..., k] & 15) << (16 + low))
        words[..., 2] |= ((s[..., k] >> 4) << ((4 + 2 * k) % 32)) | ((m[..., k] >> 4) << ((20 + 2 * k) % 32))
    return words


def layout_q4k(packed: np.ndarray, sc: np.ndarray, mn: np.ndarray, dd: np.ndarray, dmin: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Row-major Q4_K in dequant.to_q4k's form -> (q as layout_q4's, ks: the scales in 6 bits beside the
    super-block scales, see the module doc)."""
    nb = packed.shape[1] * 2 // QK
    ng = -(-packed.shape[0] // ROWS)
    ns = nb // Q4K_BLOCKS
    q = _pad_rows(packed).reshape(ng, ROWS, nb, 4, 4).transpose(0, 2, 3, 1, 4).reshape(ng, -1)
    words = _pad_rows(_q4k_words(sc, mn)).reshape(ng, ROWS, ns, 3).transpose(0, 2, 3, 1)
    neg = dmin ^ np.uint16(0x8000)  # the sign bit: the kernel adds mn * (-dmin), the offset itself
    halves = [_pad_rows(a).reshape(ng, ROWS, ns).transpose(0, 2, 1) for a in (dd, neg)]
    ks = np.concatenate([np.ascontiguousarray(words).view(np.uint16).reshape(ng, ns, 96), *halves], axis=2)
    return np.ascontiguousarray(q), np.ascontiguousarray(ks.reshape(ng, ns * Q4K_SCALES))


def layout_q8(q: np.ndarray, scale_bits: np.ndarray, pack: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Row-major q8 (rows, cols) int8 and (rows, cols/32) f16 scale bits -> (q + 128 as uint8, d); with
    ``pack``, q packed in 5 bits when every value is in [-16, 15] (Q5_0's are)."""
    nb = q.shape[1] // QK
    if pack and q.size and -16 <= q.min() and q.max() <= 15:
        return _pack_q5(q), _per_block(_pad_rows(scale_bits), -(-q.shape[0] // ROWS), nb)
    q, scale_bits = _pad_rows(q), _pad_rows(scale_bits)
    ng = q.shape[0] // ROWS
    gq = np.ascontiguousarray(q.view(np.uint8).reshape(ng, ROWS, nb, 8, 4).transpose(0, 2, 3, 1, 4)).reshape(ng, -1)
    gq ^= np.uint8(0x80)  # two's complement q -> q + 128, in place: no second copy of the matrix at load
    return gq, _per_block(scale_bits, ng, nb)


def layout_q6(q: np.ndarray, sub: np.ndarray, sup: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-major q6 (rows, cols) int8, (rows, cols/16) int8 and (rows, cols/256 or cols/32) f32 -> (q packed
    in 6 bits when every value is in [-32, 31], else q + 128 as uint8 as q8's, d [16-value block][row] int8,
    sup [super block][row] f32)."""
    gq = _pack_q6(q) if q.size and -32 <= q.min() and q.max() <= 31 else \
        layout_q8(q, np.zeros((q.shape[0], q.shape[1] // QK), np.uint16), pack=False)[0]
    sub, sup = _pad_rows(sub), _pad_rows(sup.astype(np.float32))
    ng = sub.shape[0] // ROWS
    return gq, _per_block(sub, ng, sub.shape[1]), _per_block(sup, ng, sup.shape[1])


#: bytes of a packed q6 block (16 rows x 32 columns of 6 bits)
Q6_PACKED = 384
#: row groups packed at a time: the temporaries stay a few MB whatever the matrix
_PACK_GROUPS = 256


def _pack_low_bits(q: np.ndarray, bias: int, block_bytes: int, top_bytes) -> np.ndarray:
    """Row-major (rows, cols) int8 -> packed blocks of ``block_bytes``: q + ``bias`` as q4's nibble
    arrangement (256 bytes), then ``top_bytes(u)``'s planes of the bits above the nibbles, u being the
    biased values of a chunk of groups as (g, r, b, half, step, i)."""
    nb = q.shape[1] // QK
    ng = -(-q.shape[0] // ROWS)
    out = np.empty((ng, nb, block_bytes), np.uint8)
    for g0 in range(0, ng, _PACK_GROUPS):
        chunk = _pad_rows(q[g0 * ROWS:(g0 + _PACK_GROUPS) * ROWS])
        u = (chunk + np.int8(bias)).view(np.uint8).reshape(-1, ROWS, nb, 2, 4, 4)  # (g, r, b, half, step, i)
        g1 = g0 + u.shape[0]
        nib = (u[:, :, :, 0] & 15) | ((u[:, :, :, 1] & 15) << 4)  # (g, r, b, step, i)
        out[g0:g1, :, :256] = nib.transpose(0, 2, 3, 1, 4).reshape(g1 - g0, nb, 256)
        out[g0:g1, :, 256:] = top_bytes(u).reshape(g1 - g0, nb, block_bytes - 256)
    return out.reshape(ng, nb * block_bytes)


def _q6_top(u: np.ndarray) -> np.ndarray:
    """Bits 4-5 of each column, four columns a byte: (g, b, half, r, i)."""
    top = u >> 4
    pairs = top[:, :, :, :, 0] | (top[:, :, :, :, 1] << 2) | (top[:, :, :, :, 2] << 4) | (top[:, :, :, :, 3] << 6)
    return pairs.transpose(0, 2, 3, 1, 4)


def _pack_q6(q: np.ndarray) -> np.ndarray:
    """Row-major (rows, cols) int8 in [-32, 31] -> the packed q6 layout (see the module doc)."""
    return _pack_low_bits(q, 32, Q6_PACKED, _q6_top)


#: bytes of a packed q5 block (16 rows x 32 columns of 5 bits)
Q5_PACKED = 320


def _q5_top(u: np.ndarray) -> np.ndarray:
    """Bit 4 of each of a block's 8 operands, eight to a byte: (g, b, r, i), operand k = 4 half + step at bit k."""
    top = (u >> 4).reshape(u.shape[:3] + (8, 4))  # (g, r, b, k, i)
    bits = np.zeros(top.shape[:3] + (4,), np.uint8)
    for k in range(8):
        bits |= top[:, :, :, k] << np.uint8(k)
    return bits.transpose(0, 2, 1, 3)


def _pack_q5(q: np.ndarray) -> np.ndarray:
    """Row-major (rows, cols) int8 in [-16, 15] -> the packed q5 layout (see the module doc)."""
    return _pack_low_bits(q, 16, Q5_PACKED, _q5_top)


def is_packed_q5(q: np.ndarray, cols: int) -> bool:
    """Whether the q8 weights ``q`` (a layout_q8 part) are the packed 5-bit form, for rows of ``cols``
    values."""
    return q.shape[1] == cols // QK * Q5_PACKED


def is_packed_q6(q: np.ndarray, cols: int) -> bool:
    """Whether the q6 weights ``q`` (a layout_q6 part) are the packed form, for rows of ``cols`` values."""
    return q.shape[1] == cols // QK * Q6_PACKED


#: how far ahead (bytes of ``q``) the kernels ask for weights.  A batch of 8 rows spends long enough on a
#: block that the hardware prefetcher falls behind on matrices larger than the caches: the 49152 x 576
#: output matrix took 2.5 ms instead of 1.1 ms at 8 rows (and 0.65 ms instead of 0.5 ms at 1).
PREFETCH_BYTES = 4096


# -- activations -------------------------------------------------------------------------------------------
#: level 2's step is level 1's divided by this: level 1's rounding error (at most half a step) fits int8
LEVEL2 = 254
#: from this many rows on, the products quantize their activations on every thread (a prompt); fewer rows
#: (decode, a small batch) are quantized on the calling thread: waking the pool would cost more
PARALLEL_ROWS = 8


@njit(fastmath=True, cache=True, boundscheck=False, error_model="numpy")
def quantize_rows(x, xq, xd, xi, xs):
    """Per row of x (n, cols) and 32-value block: level 1 step ``d1`` = max|x| / 127, ``q1`` = round(x / d1),
    level 2 step ``d2`` = d1 / LEVEL2, ``q2`` = round((x - d1 q1) / d2).  Into ``xq`` (n, 2, cols) the
    q as signed bytes, ``xd`` (n, 2, nb) the steps, ``xi`` (n, 2, nb) int32 the sums of the q's, and
    ``xs`` (n, nb) the sum of d1 q1 + d2 q2.

    ``xs`` sums the *rounded* block, not x: the q4 offset term m * sum(x) then carries the same rounding
    as the q term, so a block product's error is sum((q d + m) e) over the rounding errors e, proportional
    to the weights (centred for Q4_1: m ~ -8 d), instead of sum(q d e), about twice as large.
    The sums are of integers, exact in any order."""
    for t in range(x.shape[0]):
        _quantize_row(x, xq, xd, xi, xs, t)


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False, error_model="numpy")
def quantize_rows_parallel(x, xq, xd, xi, xs):
    """quantize_rows with the rows spread over the threads (a prompt's rows: run serially, the 8960-column
    input of a 1.5B's down projection kept one core idle for 0.3 ms of its 3.6 ms at 40 rows).  Each row
    runs the same code as in quantize_rows, so the results are identical."""
    for t in prange(x.shape[0]):
        _quantize_row(x, xq, xd, xi, xs, t)


@njit(inline="always")
def _quantize_row(x, xq, xd, xi, xs, t):
    """Row t's levels: as many as ``xq`` has (its second axis, 1 or 2).  A block is two 16-float vectors
    (numba left the per-value loops scalar: ~1 ns a value, 6-10% of a prompt's products); level 2's residual
    x - d1 q1 is one fused multiply-add, so it is exact."""
    xr, q1r, q2r = x[t], xq[t, 0], xq[t, xq.shape[1] - 1]
    two = xq.shape[1] == 2
    for b in range(uint64(x.shape[1] // QK)):  # unsigned indices: no negative-index code
        base = b * uint64(QK)
        v0, v1 = load_f32(xr, base), load_f32(xr, base + uint64(16))
        amax = hmax_f32(max_f32(abs_f32(v0), abs_f32(v1)))
        d1 = amax / np.float32(127.0)
        d2 = d1 / np.float32(LEVEL2)
        inv1 = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
        r0, r1 = rint_f32(mul_f32(v0, splat_f32(inv1))), rint_f32(mul_f32(v1, splat_f32(inv1)))
        i0, i1 = to_i32(r0), to_i32(r1)
        store_low_bytes(q1r, base, i0)
        store_low_bytes(q1r, base + uint64(16), i1)
        sum1 = hsum_i32(add_i32(i0, i1))
        sum2 = 0
        if two:  # one level skips level 2 whole
            inv2, neg_d1 = splat_f32(np.float32(LEVEL2) * inv1), splat_f32(-d1)
            lo, hi = splat_f32(np.float32(-127.0)), splat_f32(np.float32(127.0))
            j0 = to_i32(min_f32(hi, max_f32(lo, rint_f32(mul_f32(fma_f32(r0, neg_d1, v0), inv2)))))
            j1 = to_i32(min_f32(hi, max_f32(lo, rint_f32(mul_f32(fma_f32(r1, neg_d1, v1), inv2)))))
            store_low_bytes(q2r, base, j0)
            store_low_bytes(q2r, base + uint64(16), j1)
            sum2 = hsum_i32(add_i32(j0, j1))
            xd[t, 1, b] = d2
            xi[t, 1, b] = sum2
        xd[t, 0, b] = d1
        xi[t, 0, b] = sum1
        # in f64 both products are exact (24-bit steps times sums below 2**12), so a contraction to a fused
        # multiply-add, which fastmath may make in one inlined copy of this row and not in another, cannot
        # change the rounded f32 (serial and parallel rows stay identical); one level: exactly d1 * sum1
        xs[t, b] = np.float32(np.float64(d1) * np.float64(sum1) + np.float64(d2) * np.float64(sum2))


# -- products: out (n, rows) f32 ---------------------------------------------------------------------------
#: where in a 32-value block the activation word of each of a block's 8 weight operands starts.  q4: the
#: low nibbles of the 4 loads (columns 4 s + i) and the high ones (16 + 4 s + i), interleaved; q8: in order.
Q4_WORDS = (0, 16, 4, 20, 8, 24, 12, 28)
Q8_WORDS = (0, 4, 8, 12, 16, 20, 24, 28)


@njit(inline="always")
def _block_dot(w0, w1, w2, w3, w4, w5, w6, w7, xq, xo, words):
    """Integer dot of one 16-row x 32-column block, as 8 unsigned-byte operands, with the 32 signed bytes
    at xq[xo]; two accumulator chains (even and odd operands) so consecutive ``vpdpbusd`` do not wait on
    each other."""
    even = dot_u8s8(zeros_i32(), w0, broadcast_word(xq, xo + words[0]))
    odd = dot_u8s8(zeros_i32(), w1, broadcast_word(xq, xo + words[1]))
    even = dot_u8s8(even, w2, broadcast_word(xq, xo + words[2]))
    odd = dot_u8s8(odd, w3, broadcast_word(xq, xo + words[3]))
    even = dot_u8s8(even, w4, broadcast_word(xq, xo + words[4]))
    odd = dot_u8s8(odd, w5, broadcast_word(xq, xo + words[5]))
    even = dot_u8s8(even, w6, broadcast_word(xq, xo + words[6]))
    odd = dot_u8s8(odd, w7, broadcast_word(xq, xo + words[7]))
    return add_i32(even, odd)


@njit(inline="always")
def _q4_block(l0, l1, l2, l3, h0, h1, h2, h3, xq, xo):
    return _block_dot(l0, h0, l1, h1, l2, h2, l3, h3, xq, xo, Q4_WORDS)


@njit(inline="always")
def _q8_block(w0, w1, w2, w3, w4, w5, w6, w7, xq, xo, xsum):
    """q8 blocks hold q + 128: the extra 128 * sum(x) comes back out (``xsum``: the block's sum of x)."""
    return sub_i32(_block_dot(w0, w1, w2, w3, w4, w5, w6, w7, xq, xo, Q8_WORDS), splat_i32(xsum * 128))


@njit(inline="always")
def _int8_block(qg, o):
    """The 8 operands of a q8 / q6 block at byte ``o`` of a group's weights, the weights a prefetch distance
    ahead asked for."""
    for line in range(8):
        prefetch(qg, o + PREFETCH_BYTES + line * 64)
    return (load_bytes(qg, o), load_bytes(qg, o + 64), load_bytes(qg, o + 128), load_bytes(qg, o + 192),
            load_bytes(qg, o + 256), load_bytes(qg, o + 320), load_bytes(qg, o + 384), load_bytes(qg, o + 448))


@njit(inline="always")
def _q6_packed_block(qg, o):
    """The 8 operands (q + 32) of a packed q6 block at byte ``o`` of a group's weights, the weights a
    prefetch distance ahead asked for."""
    for line in range(6):
        prefetch(qg, o + PREFETCH_BYTES + line * 64)
    l0, l1, l2, l3 = load_bytes(qg, o), load_bytes(qg, o + 64), load_bytes(qg, o + 128), load_bytes(qg, o + 192)
    h0, h1 = load_bytes(qg, o + 256), load_bytes(qg, o + 320)
    return (or_bytes(low_nibbles(l0), bit_pair0(h0)), or_bytes(low_nibbles(l1), bit_pair1(h0)),
            or_bytes(low_nibbles(l2), bit_pair2(h0)), or_bytes(low_nibbles(l3), bit_pair3(h0)),
            or_bytes(high_nibbles(l0), bit_pair0(h1)), or_bytes(high_nibbles(l1), bit_pair1(h1)),
            or_bytes(high_nibbles(l2), bit_pair2(h1)), or_bytes(high_nibbles(l3), bit_pair3(h1)))


@njit(inline="always")
def _half_dot(w0, w1, w2, w3, xq, xo):
    """Integer dot of a 16-row x 16-column half block (q + bias against the signed bytes at xq[xo])."""
    even = dot_u8s8(zeros_i32(), w0, broadcast_word(xq, xo))
    odd = dot_u8s8(zeros_i32(), w1, broadcast_word(xq, xo + 4))
    even = dot_u8s8(even, w2, broadcast_word(xq, xo + 8))
    odd = dot_u8s8(odd, w3, broadcast_word(xq, xo + 12))
    return add_i32(even, odd)


@njit(cache=True, boundscheck=False)
def _half_sums(xq):
    """(n, levels, cols / 16) int32: the sums of each level's signed bytes per 16 columns (q6's blocks)."""
    out = np.empty((xq.shape[0], xq.shape[1], xq.shape[2] // 16), np.int32)
    if xq.shape[0] >= PARALLEL_ROWS:
        _half_sums_parallel(xq, out)
    else:
        for t in range(xq.shape[0]):
            _half_sums_row(xq, out, t)
    return out


@njit(parallel=True, cache=True, boundscheck=False)
def _half_sums_parallel(xq, out):
    for t in prange(xq.shape[0]):
        _half_sums_row(xq, out, t)


@njit(inline="always")
def _half_sums_row(xq, out, t):
    for lv in range(xq.shape[1]):
        for b in range(xq.shape[2] // 16):
            total = 0
            for j in range(b * 16, b * 16 + 16):
                v = np.int32(xq[t, lv, j])
                total += v - 256 if v > 127 else v
            out[t, lv, b] = total


@njit(inline="always")
def _group_bytes(q, scales, count):
    """Bytes of one group's weights and its ``count`` per-block scale arrays like ``scales`` (row_tiles)."""
    return q.shape[1] * q.itemsize + count * scales.shape[1] * scales.itemsize


@njit(inline="always")
def _store_rows(acc, out, t0, t1, g, rows):
    """Rows t0..t1 of group g's outputs from the tile's accumulators (row t at acc[(t - t0) * ROWS])."""
    r0 = g * ROWS
    for t in range(t0, t1):
        for r in range(min(ROWS, rows - r0)):
            out[t, r0 + r] = acc[(t - t0) * ROWS + r]


@njit(inline="always")
def _add_levels(acc, t, base, i2, i1, scale, xd, tx, b, levels):
    """acc[t] = base + i2 * scale * x2 + i1 * scale * x1 (t: the row's place in its tile; x1, x2: the levels'
    steps of row tx's block b): a block's level products (integer) scaled, level 2 (the small term) added
    first so it is not lost against the large one.  One level: i1's term alone (level 2's step taken as 0)."""
    # no branch: numba's inlining of the q8 / q6 overloads below warns on the phi a branch leaves (one level:
    # a zero step, base + i2 * 0 = base exactly)
    # unsigned indices: no negative-index code (6 of the ~22 instructions a row and block on the amx path)
    tu, bu = uint64(tx), uint64(b)
    x2 = splat_f32(xd[tu, uint64(levels - 1), bu] * np.float32(levels - 1))
    part = fma_f32(to_f32(i2), mul_f32(scale, x2), base)
    store_f32(acc, t * ROWS, fma_f32(to_f32(i1), mul_f32(scale, splat_f32(xd[tu, uint64(0), bu])), part))


@njit(inline="always")
def scaled_row_step(acc, t, t0, i1, i2, scale, xd, b, levels):
    """acc[t] += a q8 / q5 / q6 block (``scale`` per row) . x[t] from its level products ``i1``, ``i2``."""
    _add_levels(acc, t - t0, load_f32(acc, (t - t0) * ROWS), i2, i1, scale, xd, t, b, levels)


@njit
def _levels(x, levels):
    """x's int8 levels (1 or 2), their steps and sums (quantize_rows), freshly allocated."""
    return padded_levels(x, levels, 0)


@njit
def padded_levels(x, levels, pad):
    """_levels with ``pad`` rows of zeros after x's in ``xq`` (whole tiles for matmul_amx), not in the others."""
    n, cols = x.shape
    xq, xd = np.empty((n + pad, levels, cols), np.uint8), np.empty((n, levels, cols // QK), np.float32)
    xq[n:] = 0
    xi, xs = np.empty((n, levels, cols // QK), np.int32), np.empty((n, cols // QK), np.float32)
    if n >= PARALLEL_ROWS:
        quantize_rows_parallel(x, xq, xd, xi, xs)
    else:
        quantize_rows(x, xq, xd, xi, xs)
    return xq, xd, xi, xs


# The products take x (n, cols) f32 and quantize it first, serially, in the same call: one dispatch from
# Python per product instead of two (at 8 rows a call costs more than the quantization).
@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def q4_matmul(q, d, m, x, out, l2, threads, levels):
    literally(levels)
    xq, xd, _, xs = _levels(x, levels)
    n, cols = xq.shape[0], xq.shape[2]
    tile, slices = row_tiles(n, cols, _group_bytes(q, d, 2), q.shape[0], l2, threads)
    if tile >= n:  # untiled: a group a task, the rows from 0 (decode's loop, constants where they were)
        for g in prange(q.shape[0]):
            _q4_group(q[g], d[g], m[g], g, xq, xd, xs, out, 0, n, levels)
    else:
        for s in prange(slices):
            g0, g1 = slice_bounds(s, slices, q.shape[0])
            for t0 in range(0, n, tile):
                for g in range(g0, g1):
                    _q4_group(q[g], d[g], m[g], g, xq, xd, xs, out, t0, min(n, t0 + tile), levels)


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def q4k_matmul(q, ks, x, out, l2, threads, levels):
    """q4 with Q4_K's factored scales (layout_q4k): a block's scale and offset are rebuilt from its 6-bit
    factors and its super block's f16 scales (both products exact in f32), then q4_matmul's step runs."""
    literally(levels)
    xq, xd, _, xs = _levels(x, levels)
    n, cols = xq.shape[0], xq.shape[2]
    tile, slices = row_tiles(n, cols, _group_bytes(q, ks, 1), q.shape[0], l2, threads)
    if tile >= n:  # untiled: a group a task, the rows from 0 (decode's loop, constants where they were)
        for g in prange(q.shape[0]):
            _q4k_group(q[g], ks[g], g, xq, xd, xs, out, 0, n, levels)
    else:
        for s in prange(slices):
            g0, g1 = slice_bounds(s, slices, q.shape[0])
            for t0 in range(0, n, tile):
                for g in range(g0, g1):
                    _q4k_group(q[g], ks[g], g, xq, xd, xs, out, t0, min(n, t0 + tile), levels)


@njit(inline="always")
def _q4_group(qg, dg, mg, g, xq, xd, xs, out, t0, t1, levels):
    """Group g of a q4 matrix (weights qg, scales dg, offsets mg) . x[t] into out[t], rows t0..t1."""
    acc = np.zeros((t1 - t0) * ROWS, np.float32)
    ahead = PREFETCH_BYTES // (4 * 64)
    for b in range(xd.shape[2]):
        prefetch(dg, (b + ahead) * ROWS)
        prefetch(mg, (b + ahead) * ROWS)
        _q4_rows(qg, b, load_f32(dg, b * ROWS), load_f32(mg, b * ROWS), xq, xd, xs, acc, t0, t1, xq.shape[2], levels)
    _store_rows(acc, out, t0, t1, g, out.shape[1])


@njit(inline="always")
def _q4k_group(qg, kg, g, xq, xd, xs, out, t0, t1, levels):
    """Group g of a Q4_K matrix (weights qg, scales kg: layout_q4k) . x[t] into out[t], rows t0..t1."""
    acc = np.zeros((t1 - t0) * ROWS, np.float32)
    ahead = PREFETCH_BYTES // (4 * 64 * Q4K_BLOCKS) * Q4K_SCALES  # the weights' distance, in super blocks
    for s in range(xd.shape[2] // Q4K_BLOCKS):
        o = s * Q4K_SCALES
        for line in range(4):  # uint16 elements: 32 a cache line
            prefetch(kg, o + ahead + line * 32)
        tops, dd, nd = load_i32(kg, o + 64), load_f32(kg, o + 96), load_f32(kg, o + 112)  # ``dmin`` negated
        for h in range(2):
            lows = load_i32(kg, o + 32 * h)
            for k in range(4):
                dv, mv = q4k_block_scales(lows, tops, dd, nd, h, k)
                _q4_rows(qg, s * Q4K_BLOCKS + 4 * h + k, dv, mv, xq, xd, xs, acc, t0, t1, xq.shape[2], levels)
    _store_rows(acc, out, t0, t1, g, out.shape[1])


@njit(inline="always")
def q4k_block_scales(lows, tops, dd, nd, h, k):
    """Block 4 h + k's scale and offset per row from its super block's scale words ``lows`` (plane h),
    ``tops`` (plane 2) and f16 scales ``dd``, ``nd`` (``dmin`` negated)."""
    # scale | min << 16: the low 4 bits of each, then the top 2 rotated down to bits 4-5
    v = or_i32(and_i32(shift_right_i32(lows, 4 * k), splat_i32(0x000F000F)),
               and_i32(rotate_right_i32(tops, 8 * h + 2 * k), splat_i32(0x00300030)))
    return mul_f32(to_f32(and_i32(v, splat_i32(0xFFFF))), dd), mul_f32(to_f32(shift_right_i32(v, 16)), nd)


@njit(inline="always")
def _q4_rows(qg, b, dv, mv, xq, xd, xs, acc, t0, t1, cols, levels):
    """acc[t] += block b of a q4 group (scale ``dv``, offset ``mv`` per row) . x[t], for every row t; the
    weights a prefetch distance ahead asked for."""
    o = b * 4 * 64
    for line in range(4):  # past the group's end: the next group's, contiguous
        prefetch(qg, o + PREFETCH_BYTES + line * 64)
    w0, w1 = load_bytes(qg, o), load_bytes(qg, o + 64)
    w2, w3 = load_bytes(qg, o + 128), load_bytes(qg, o + 192)
    l0, l1, l2, l3 = low_nibbles(w0), low_nibbles(w1), low_nibbles(w2), low_nibbles(w3)
    h0, h1, h2, h3 = high_nibbles(w0), high_nibbles(w1), high_nibbles(w2), high_nibbles(w3)
    for t in range(t0, t1):
        xo = t * levels * cols + b * QK
        i1 = _q4_block(l0, l1, l2, l3, h0, h1, h2, h3, xq, xo)
        i2 = _q4_block(l0, l1, l2, l3, h0, h1, h2, h3, xq, xo + cols) if levels == 2 else i1
        q4_row_step(acc, t, t0, i1, i2, dv, mv, xd, xs, b, levels)


@njit(inline="always")
def q4_row_step(acc, t, t0, i1, i2, dv, mv, xd, xs, b, levels):
    """acc[t] += a q4 block (scale ``dv``, offset ``mv`` per row) . x[t] from its level products ``i1``,
    ``i2`` (the vnni and amx kernels share it: the same f32 operations on the same integers)."""
    # the small terms first: the offset, then the levels
    base = fma_f32(mv, splat_f32(xs[uint64(t), uint64(b)]), load_f32(acc, (t - t0) * ROWS))
    _add_levels(acc, t - t0, base, i2, i1, dv, xd, t, b, levels)


# q8 and q6 share the driver (int8_matmul); what differs, the scales and the activation sums of a block, is
# picked by the scales' dtype when numba compiles it: f16 bits (uint16) one per 32 values (q8), int8 sub-block
# scales per 16 with f32 super-block scales ``sup`` (q6).  The overloads below are inlined, so each layout runs
# the loop it had as its own kernel.
def _block_sums(xq, xi, d):
    """The activation sums a block step takes out of its q + 128 products (typed per layout below)."""


@overload(_block_sums, inline="always")
def _block_sums_of(xq, xi, d):
    if d.dtype == types.uint16:
        return lambda xq, xi, d: xi  # q8: quantize_rows's sums per 32
    return lambda xq, xi, d: _half_sums(xq)  # q6: per 16


def _block_rows(w0, w1, w2, w3, w4, w5, w6, w7, dg, sg, b, xq, xd, sums, acc, t0, t1, cols, levels):
    """acc[t] += block b of the group (weights w0..w7, scales dg, sg) . x[t], for every row t (typed per
    layout)."""


@overload(_block_rows, inline="always")
def _block_rows_of(w0, w1, w2, w3, w4, w5, w6, w7, dg, sg, b, xq, xd, sums, acc, t0, t1, cols, levels):
    ahead = PREFETCH_BYTES // (8 * 64)
    if dg.dtype == types.uint16:
        def q8_rows(w0, w1, w2, w3, w4, w5, w6, w7, dg, sg, b, xq, xd, sums, acc, t0, t1, cols, levels):
            prefetch(dg, (b + ahead) * ROWS)
            dv = load_f32(dg, b * ROWS)
            for t in range(t0, t1):
                xo = t * levels * cols + b * QK
                i1 = _q8_block(w0, w1, w2, w3, w4, w5, w6, w7, xq, xo, sums[t, 0, b])
                # one level: i1's own dot again (the compiler merges the two), no branch (see _add_levels)
                i2 = _q8_block(w0, w1, w2, w3, w4, w5, w6, w7, xq, xo + (levels - 1) * cols, sums[t, levels - 1, b])
                scaled_row_step(acc, t, t0, i1, i2, dv, xd, b, levels)
        return q8_rows

    def q6_rows(w0, w1, w2, w3, w4, w5, w6, w7, dg, sg, b, xq, xd, sums, acc, t0, t1, cols, levels):
        _q6_rows(w0, w1, w2, w3, w4, w5, w6, w7, dg, sg, b, xq, xd, sums, acc, t0, t1, cols, 128, levels)
    return q6_rows


@njit(inline="always")
def _q6_rows(w0, w1, w2, w3, w4, w5, w6, w7, dg, sg, b, xq, xd, sums, acc, t0, t1, cols, bias, levels):
    """q6's block step (operands q + ``bias``): two half-block integer dots times their int8 scales, summed
    in int32, then the super-block scale."""
    ahead = PREFETCH_BYTES // (8 * 64)
    prefetch(dg, (2 * b + 2 * ahead) * ROWS)
    s_lo, s_hi = load_i8_i32(dg, 2 * b * ROWS), load_i8_i32(dg, (2 * b + 1) * ROWS)
    sup = load_f32(sg, b // (dg.shape[0] // (2 * sg.shape[0])) * ROWS)  # 32-blocks per super block
    for t in range(t0, t1):
        xo = t * levels * cols + b * QK
        i1 = _q6_level(w0, w1, w2, w3, w4, w5, w6, w7, xq, xo, sums, t, 0, b, bias, s_lo, s_hi)
        # one level: i1's own dot again (the compiler merges the two), no branch (see _add_levels)
        i2 = _q6_level(w0, w1, w2, w3, w4, w5, w6, w7, xq, xo + (levels - 1) * cols, sums, t, levels - 1, b, bias,
                       s_lo, s_hi)
        scaled_row_step(acc, t, t0, i1, i2, sup, xd, b, levels)


@njit(inline="always")
def _q6_level(w0, w1, w2, w3, w4, w5, w6, w7, xq, xo, sums, t, lv, b, bias, s_lo, s_hi):
    """One level's integer product of a q6 block: its two halves times their int8 scales, summed in int32."""
    return q6_ints(_half_dot(w0, w1, w2, w3, xq, xo), _half_dot(w4, w5, w6, w7, xq, xo + 16), sums, t, lv, b, bias,
                   s_lo, s_hi)


@njit(inline="always")
def q6_ints(lo, hi, sums, t, lv, b, bias, s_lo, s_hi):
    """A q6 block's integer product from its two half products ``lo``, ``hi`` (of q + ``bias``): the extra
    bias * sum(x) of each half taken back out, then each times its int8 scale, summed in int32."""
    return q6_scaled(sub_i32(lo, splat_i32(sums[t, lv, 2 * b] * bias)),
                     sub_i32(hi, splat_i32(sums[t, lv, 2 * b + 1] * bias)), s_lo, s_hi)


@njit(inline="always")
def q6_scaled(lo, hi, s_lo, s_hi):
    """A q6 block's integer product from its half products of signed q: each times its int8 scale."""
    return add_i32(mul_i32(lo, s_lo), mul_i32(hi, s_hi))


@njit(inline="always")
def _int8_group(qg, dg, sg, g, xq, xd, sums, out, t0, t1, levels):
    """Group g of a q8 / q6 matrix (int8_matmul) . x[t] into out[t], rows t0..t1."""
    acc = np.zeros((t1 - t0) * ROWS, np.float32)
    for b in range(xd.shape[2]):
        w0, w1, w2, w3, w4, w5, w6, w7 = _int8_block(qg, b * 8 * 64)
        _block_rows(w0, w1, w2, w3, w4, w5, w6, w7, dg, sg, b, xq, xd, sums, acc, t0, t1, xq.shape[2], levels)
    _store_rows(acc, out, t0, t1, g, out.shape[1])


@njit(inline="always")
def _q6_packed_group(qg, dg, sg, g, xq, xd, sums, out, t0, t1, levels):
    """Group g of a packed q6 matrix . x[t] into out[t], rows t0..t1."""
    acc = np.zeros((t1 - t0) * ROWS, np.float32)
    for b in range(xd.shape[2]):
        w0, w1, w2, w3, w4, w5, w6, w7 = _q6_packed_block(qg, b * Q6_PACKED)
        _q6_rows(w0, w1, w2, w3, w4, w5, w6, w7, dg, sg, b, xq, xd, sums, acc, t0, t1, xq.shape[2], 32, levels)
    _store_rows(acc, out, t0, t1, g, out.shape[1])


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def int8_matmul(q, d, x, out, sup, l2, threads, levels):
    """q8 (``d`` f16 bits per 32 values, ``sup`` None) or q6 (``d`` int8 per 16, each half block its own
    scale, ``sup`` f32 per super block)."""
    literally(levels)
    xq, xd, xi, _ = _levels(x, levels)
    sums = _block_sums(xq, xi, d)
    n, cols = xq.shape[0], xq.shape[2]
    tile, slices = row_tiles(n, cols, _group_bytes(q, d, 1), q.shape[0], l2, threads)
    if tile >= n:  # untiled: a group a task, the rows from 0 (decode's loop, constants where they were)
        for g in prange(q.shape[0]):
            _int8_group(q[g], d[g], group_part(sup, g), g, xq, xd, sums, out, 0, n, levels)
    else:
        for s in prange(slices):
            g0, g1 = slice_bounds(s, slices, q.shape[0])
            for t0 in range(0, n, tile):
                for g in range(g0, g1):
                    _int8_group(q[g], d[g], group_part(sup, g), g, xq, xd, sums, out, t0, min(n, t0 + tile), levels)


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def q6_packed_matmul(q, d, x, out, sup, l2, threads, levels):
    """q6 in the packed layout: int8_matmul's q6 loop over operands rebuilt from 6 bits."""
    literally(levels)
    xq, xd, _, _ = _levels(x, levels)
    sums = _half_sums(xq)
    n, cols = xq.shape[0], xq.shape[2]
    tile, slices = row_tiles(n, cols, _group_bytes(q, d, 1), q.shape[0], l2, threads)
    if tile >= n:  # untiled: a group a task, the rows from 0 (decode's loop, constants where they were)
        for g in prange(q.shape[0]):
            _q6_packed_group(q[g], d[g], sup[g], g, xq, xd, sums, out, 0, n, levels)
    else:
        for s in prange(slices):
            g0, g1 = slice_bounds(s, slices, q.shape[0])
            for t0 in range(0, n, tile):
                for g in range(g0, g1):
                    _q6_packed_group(q[g], d[g], sup[g], g, xq, xd, sums, out, t0, min(n, t0 + tile), levels)


@njit(inline="always")
def _q5_packed_block(qg, o):
    """The 8 operands (q + 16) of a packed q5 block at byte ``o`` of a group's weights, in the order of
    _q4_block's arguments, the weights a prefetch distance ahead asked for."""
    for line in range(5):
        prefetch(qg, o + PREFETCH_BYTES + line * 64)
    l0, l1, l2, l3 = load_bytes(qg, o), load_bytes(qg, o + 64), load_bytes(qg, o + 128), load_bytes(qg, o + 192)
    top = load_bytes(qg, o + 256)
    return (or_bytes(low_nibbles(l0), bit_four0(top)), or_bytes(low_nibbles(l1), bit_four1(top)),
            or_bytes(low_nibbles(l2), bit_four2(top)), or_bytes(low_nibbles(l3), bit_four3(top)),
            or_bytes(high_nibbles(l0), bit_four4(top)), or_bytes(high_nibbles(l1), bit_four5(top)),
            or_bytes(high_nibbles(l2), bit_four6(top)), or_bytes(high_nibbles(l3), bit_four7(top)))


@njit(inline="always")
def _q5_block(l0, l1, l2, l3, h0, h1, h2, h3, xq, xo, xsum):
    """q5 operands hold q + 16: the extra 16 * sum(x) comes back out, leaving the same integer as q8's."""
    return sub_i32(_q4_block(l0, l1, l2, l3, h0, h1, h2, h3, xq, xo), splat_i32(xsum * 16))


@njit(inline="always")
def _q5_packed_group(qg, dg, g, xq, xd, xi, out, t0, t1, levels):
    """Group g of a packed q5 matrix . x[t] into out[t], rows t0..t1."""
    acc = np.zeros((t1 - t0) * ROWS, np.float32)
    cols = xq.shape[2]
    ahead = PREFETCH_BYTES // Q5_PACKED
    for b in range(xd.shape[2]):
        w0, w1, w2, w3, w4, w5, w6, w7 = _q5_packed_block(qg, b * Q5_PACKED)
        prefetch(dg, (b + ahead) * ROWS)
        dv = load_f32(dg, b * ROWS)
        for t in range(t0, t1):
            xo = t * levels * cols + b * QK
            i1 = _q5_block(w0, w1, w2, w3, w4, w5, w6, w7, xq, xo, xi[t, 0, b])
            i2 = _q5_block(w0, w1, w2, w3, w4, w5, w6, w7, xq, xo + cols, xi[t, 1, b]) if levels == 2 else i1
            scaled_row_step(acc, t, t0, i1, i2, dv, xd, b, levels)
    _store_rows(acc, out, t0, t1, g, out.shape[1])


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def q5_packed_matmul(q, d, x, out, l2, threads, levels):
    """q8 in the packed 5-bit layout: int8_matmul's q8 loop over operands rebuilt from 5 bits.  Each block's
    integer products equal the unpacked layout's, so the results are identical to it (test)."""
    literally(levels)
    xq, xd, xi, _ = _levels(x, levels)
    n, cols = xq.shape[0], xq.shape[2]
    tile, slices = row_tiles(n, cols, _group_bytes(q, d, 1), q.shape[0], l2, threads)
    if tile >= n:  # untiled: a group a task, the rows from 0 (decode's loop, constants where they were)
        for g in prange(q.shape[0]):
            _q5_packed_group(q[g], d[g], g, xq, xd, xi, out, 0, n, levels)
    else:
        for s in prange(slices):
            g0, g1 = slice_bounds(s, slices, q.shape[0])
            for t0 in range(0, n, tile):
                for g in range(g0, g1):
                    _q5_packed_group(q[g], d[g], g, xq, xd, xi, out, t0, min(n, t0 + tile), levels)


# -- the products as callers use them ----------------------------------------------------------------------
# Each kernel above takes ``levels`` (1 or 2) as a compile-time constant (``literally``): one level drops the
# second level's quantization, dots and scaling from the code, two levels carry no test for it.  A literal
# argument passed from Python re-types the call every time (~0.2 s); passed as a constant from compiled code it
# does not, so these small compiled callers pick the kernel's compiled form for ``levels``.
@njit(cache=True)
def q4_product(q, d, m, x, out, l2, threads, levels):
    """q4_matmul with ``levels`` int8 activation levels."""
    q4_matmul(q, d, m, x, out, l2, threads, 1) if levels == 1 else q4_matmul(q, d, m, x, out, l2, threads, 2)


@njit(cache=True)
def q4k_product(q, ks, x, out, l2, threads, levels):
    """q4k_matmul with ``levels`` int8 activation levels."""
    q4k_matmul(q, ks, x, out, l2, threads, 1) if levels == 1 else q4k_matmul(q, ks, x, out, l2, threads, 2)


@njit(cache=True)
def int8_product(q, d, x, out, sup, l2, threads, levels):
    """int8_matmul (q8 or q6) with ``levels`` int8 activation levels."""
    int8_matmul(q, d, x, out, sup, l2, threads, 1) if levels == 1 else int8_matmul(q, d, x, out, sup, l2, threads, 2)


@njit(cache=True)
def q6_packed_product(q, d, x, out, sup, l2, threads, levels):
    """q6_packed_matmul with ``levels`` int8 activation levels."""
    if levels == 1:
        q6_packed_matmul(q, d, x, out, sup, l2, threads, 1)
    else:
        q6_packed_matmul(q, d, x, out, sup, l2, threads, 2)


@njit(cache=True)
def q5_packed_product(q, d, x, out, l2, threads, levels):
    """q5_packed_matmul with ``levels`` int8 activation levels."""
    q5_packed_matmul(q, d, x, out, l2, threads, 1) if levels == 1 else q5_packed_matmul(q, d, x, out, l2, threads, 2)
