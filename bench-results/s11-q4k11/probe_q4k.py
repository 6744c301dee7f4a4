"""q4k11 probe: the Q4_K products of a model, alone, main's layout (sc, mn int8 per block, dd, -dmin f16 per
super block: 4.625 bits/weight) against the packed 6-bit one (layout_q4k's ks: 4.5), alternating in one process
so drift hits both alike.  The old kernel is main's _q4k_group, rebuilt here over the old arrays (unpacked from
ks with numpy); a second packed variant ("pre") unpacks a super block's 8 scales and mins into f32 on the
stack first.  Outputs are checked bit-identical.  Decode: every Q4_K matrix of the model at one row, ``steps``
passes; prompt: the same matrices at ``rows`` rows.

    python probe_q4k.py qwen2.5-coder-1.5b-instruct --steps 100 --reps 7 --rows 454 --json out.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from numba import literally, njit, prange

import corert
from corert.engines.native import matmul_i8 as mi
from corert.engines.native.matmul_i8 import (PREFETCH_BYTES, Q4K_BLOCKS, Q4K_SCALES, ROWS, _levels, _q4_rows,
                                             _store_rows)
from corert.engines.native.row_tiles import row_tiles, slice_bounds
from corert.kernels.simd import (and_i32, load_f32, load_i32, load_i8_i32, mul_f32, or_i32, prefetch,
                                 rotate_right_i32, shift_right_i32, splat_i32, store_f32, to_f32)


@njit(inline="always")
def _old_group(qg, sg, mg, dg, ng, g, xq, xd, xs, out, t0, t1, levels):
    """main's _q4k_group (a532d72)."""
    acc = np.zeros((t1 - t0) * ROWS, np.float32)
    ahead = PREFETCH_BYTES // (4 * 64)
    per = xd.shape[2] * ROWS // dg.shape[0]
    for b in range(xd.shape[2]):
        prefetch(sg, (b + ahead) * ROWS)
        prefetch(mg, (b + ahead) * ROWS)
        sup = b // per * ROWS
        dv = mul_f32(to_f32(load_i8_i32(sg, b * ROWS)), load_f32(dg, sup))
        mv = mul_f32(to_f32(load_i8_i32(mg, b * ROWS)), load_f32(ng, sup))
        _q4_rows(qg, b, dv, mv, xq, xd, xs, acc, t0, t1, xq.shape[2], levels)
    _store_rows(acc, out, t0, t1, g, out.shape[1])


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def old_matmul(q, sc, mn, dd, dmin, x, out, l2, threads, levels):
    literally(levels)
    xq, xd, _, xs = _levels(x, levels)
    n, cols = xq.shape[0], xq.shape[2]
    tile, slices = row_tiles(n, cols, q.shape[1] + 2 * sc.shape[1], q.shape[0], l2, threads)
    if tile >= n:
        for g in prange(q.shape[0]):
            _old_group(q[g], sc[g], mn[g], dd[g], dmin[g], g, xq, xd, xs, out, 0, n, levels)
    else:
        for s in prange(slices):
            g0, g1 = slice_bounds(s, slices, q.shape[0])
            for t0 in range(0, n, tile):
                for g in range(g0, g1):
                    _old_group(q[g], sc[g], mn[g], dd[g], dmin[g], g, xq, xd, xs, out, t0, min(n, t0 + tile), levels)


@njit(inline="always")
def _pre_group(qg, kg, g, xq, xd, xs, out, t0, t1, levels):
    """The packed layout, a super block's d and m unpacked into f32 on the stack before its blocks run."""
    acc = np.zeros((t1 - t0) * ROWS, np.float32)
    dm = np.empty(2 * Q4K_BLOCKS * ROWS, np.float32)
    ahead = PREFETCH_BYTES // (4 * 64 * Q4K_BLOCKS) * Q4K_SCALES
    for s in range(xd.shape[2] // Q4K_BLOCKS):
        o = s * Q4K_SCALES
        for line in range(4):
            prefetch(kg, o + ahead + line * 32)
        tops, dd, nd = load_i32(kg, o + 64), load_f32(kg, o + 96), load_f32(kg, o + 112)
        lows0, lows1 = load_i32(kg, o), load_i32(kg, o + 32)
        for k in range(Q4K_BLOCKS):
            lows = lows0 if k < 4 else lows1
            v = or_i32(and_i32(shift_right_i32(lows, 4 * (k % 4)), splat_i32(0x000F000F)),
                       and_i32(rotate_right_i32(tops, 2 * k), splat_i32(0x00300030)))
            store_f32(dm, 2 * k * ROWS, mul_f32(to_f32(and_i32(v, splat_i32(0xFFFF))), dd))
            store_f32(dm, (2 * k + 1) * ROWS, mul_f32(to_f32(shift_right_i32(v, 16)), nd))
        for k in range(Q4K_BLOCKS):
            _q4_rows(qg, s * Q4K_BLOCKS + k, load_f32(dm, 2 * k * ROWS), load_f32(dm, (2 * k + 1) * ROWS),
                     xq, xd, xs, acc, t0, t1, xq.shape[2], levels)
    _store_rows(acc, out, t0, t1, g, out.shape[1])


@njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def pre_matmul(q, ks, x, out, l2, threads, levels):
    literally(levels)
    xq, xd, _, xs = _levels(x, levels)
    n, cols = xq.shape[0], xq.shape[2]
    tile, slices = row_tiles(n, cols, q.shape[1] + 2 * ks.shape[1], q.shape[0], l2, threads)
    if tile >= n:
        for g in prange(q.shape[0]):
            _pre_group(q[g], ks[g], g, xq, xd, xs, out, 0, n, levels)
    else:
        for s in prange(slices):
            g0, g1 = slice_bounds(s, slices, q.shape[0])
            for t0 in range(0, n, tile):
                for g in range(g0, g1):
                    _pre_group(q[g], ks[g], g, xq, xd, xs, out, t0, min(n, t0 + tile), levels)


# called from compiled code with a constant ``levels`` (a literal from Python re-types every call: ~0.2 s)
@njit(cache=True)
def old_product(q, sc, mn, dd, dmin, x, out, l2, threads):
    old_matmul(q, sc, mn, dd, dmin, x, out, l2, threads, 2)


@njit(cache=True)
def pre_product(q, ks, x, out, l2, threads):
    pre_matmul(q, ks, x, out, l2, threads, 2)


def old_arrays(ks):
    """ks (groups, supers * Q4K_SCALES) -> main's sc, mn int8 [block][row], dd, -dmin f16 bits [super][row]."""
    ng, ns = ks.shape[0], ks.shape[1] // Q4K_SCALES
    blocks = ks.reshape(ng, ns, Q4K_SCALES)
    words = np.ascontiguousarray(blocks[..., :96]).view(np.uint32).reshape(ng, ns, 3, ROWS)
    sc, mn = (np.empty((ng, ns, 8, ROWS), np.int8) for _ in range(2))
    for k in range(8):
        low = words[:, :, k // 4] >> np.uint32(4 * (k % 4))
        top = (words[:, :, 2] >> np.uint32(2 * k)) | (words[:, :, 2] << np.uint32((32 - 2 * k) % 32))
        v = (low & np.uint32(0x000F000F)) | (top & np.uint32(0x00300030))
        sc[:, :, k], mn[:, :, k] = (v & np.uint32(0xFFFF)).astype(np.int8), (v >> np.uint32(16)).astype(np.int8)
    dd = np.ascontiguousarray(blocks[..., 96:112]).reshape(ng, -1)
    nd = np.ascontiguousarray(blocks[..., 112:128]).reshape(ng, -1)
    return sc.reshape(ng, -1), mn.reshape(ng, -1), dd, nd


def q4k_matrices(tf):
    out = []
    for layer in tf.layers:
        for w in (layer.wqkv, layer.wo, layer.wgate_up, layer.wdown):
            for piece in getattr(w, "pieces", (w,)):
                if piece.kind == "q4" and len(piece.parts) == 2:
                    out.append(piece)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--rows", type=int, default=454)
    ap.add_argument("--json")
    args = ap.parse_args()
    import numba
    with corert.Runtime(engine="native", model=args.model, n_ctx=2048) as rt:
        rt.generate("warm up", max_tokens=2, temperature=0.0)
        tf = rt.load_generation_model()[0].transformer
        mats = q4k_matrices(tf)
        olds = [(m.parts[0], *old_arrays(m.parts[1])) for m in mats]
        l2 = tf._products.l2
        rng = np.random.default_rng(0)
        result = {"model": args.model, "matrices": len(mats),
                  "bytes_new": int(sum(m.parts[0].nbytes + m.parts[1].nbytes for m in mats)),
                  "bytes_old": int(sum(sum(a.nbytes for a in o) for o in olds))}
        for label, n, steps in (("decode", 1, args.steps), ("prompt", args.rows, 1)):
            threads = numba.get_num_threads() if n >= mi.PARALLEL_ROWS else 1
            xs = {m.cols: rng.standard_normal((n, m.cols)).astype(np.float32) for m in mats}
            outs = {k: [np.empty((n, m.rows), np.float32) for m in mats] for k in ("old", "new", "pre")}

            def run(kind):
                for i, (m, o) in enumerate(zip(mats, olds)):
                    x, out = xs[m.cols], outs[kind][i]
                    if kind == "old":
                        old_product(*o, x, out, l2, threads)
                    elif kind == "new":
                        mi.q4k_product(*m.parts, x, out, l2, threads, 2)
                    else:
                        pre_product(*m.parts, x, out, l2, threads)
            for kind in ("old", "new", "pre"):
                run(kind)
            same = {k: all(np.array_equal(a, b) for a, b in zip(outs["old"], outs[k])) for k in ("new", "pre")}
            times = {k: [] for k in ("old", "new", "pre")}
            for rep in range(args.reps):
                for kind in (("old", "new", "pre") if rep % 2 == 0 else ("pre", "new", "old")):
                    t0 = time.perf_counter()
                    for _ in range(steps):
                        run(kind)
                    times[kind].append((time.perf_counter() - t0) / steps * 1e3)
            result[label] = {"rows": n, "identical_to_old": same, "ms_per_pass": times,
                             "median_ms": {k: statistics.median(v) for k, v in times.items()}}
            print(label, json.dumps(result[label]["median_ms"]), same, flush=True)
        print("bytes old/new", result["bytes_old"], result["bytes_new"])
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
