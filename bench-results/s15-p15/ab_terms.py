"""In-process A/B of matmul_bf16's term counts (matmul_bf16.TERMS: 1, 2x, 2w, 3 bf16 tile products a block)
on one random matrix of Qwen 1.5B's prompt shapes, interleaved in one process (the VM's drift hits all
alike), with each one's largest error against a float64 product of the dequantized weights (of the largest
output).  Usage: ab_terms.py q4k|q6p ROWS COLS N [REPS]   (q4k: Q4_K's factored scales; q6p: packed Q6_K)"""
import json
import sys
import time

import numpy as np

from corert.engines.native import matmul_bf16 as BF, matmul_i8

rng = np.random.default_rng(0)
kind, rows, cols, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
reps = int(sys.argv[5]) if len(sys.argv) > 5 else 15


def per(a, width):
    return np.repeat(a.astype(np.float64), width, axis=1)


if kind == "q4k":  # Q4_K as tests/native_support.random_blocks makes it
    nib = rng.integers(0, 256, (rows, cols // 2)).astype(np.uint8)
    sc, mn = rng.integers(0, 64, (2, rows, cols // 32)).astype(np.uint8)
    dd, dmin = rng.uniform(1e-4, 1e-3, (2, rows, cols // 256)).astype(np.float16).view(np.uint16)
    parts = matmul_i8.layout_q4k(nib, sc, mn, dd, dmin)
    blk = nib.reshape(rows, -1, 16)
    qv = np.concatenate([blk & 15, blk >> 4], axis=2).reshape(rows, cols).astype(np.float64)
    scale = (sc * per(dd.view(np.float16), 8)).astype(np.float32)
    offset = -(mn * per(dmin.view(np.float16), 8)).astype(np.float32)
    w = qv * per(scale, 32) + per(offset, 32)

    def run(x, o, split):
        BF.q4k_product(*parts, x, o, 2, split)
else:  # packed Q6_K: 6-bit values, int8 scales a 16, f32 a 256
    q = (rng.integers(-128, 128, (rows, cols)) // 4).astype(np.int8)
    sub = rng.integers(-128, 128, (rows, cols // 16)).astype(np.int8)
    sup = rng.uniform(1e-3, 1e-2, (rows, cols // 256)).astype(np.float32)
    parts = matmul_i8.layout_q6(q, sub, sup)
    assert matmul_i8.is_packed_q6(parts[0], cols)
    w = q * per(sub, 16) * per(sup, 256)

    def run(x, o, split):
        BF.q6_packed_product(parts[0], parts[1], x, o, parts[2], 2, split)

x = rng.standard_normal((n, cols)).astype(np.float32)
ref = x.astype(np.float64) @ w.T
outs = {t: np.empty((n, rows), np.float32) for t in BF.TERMS}
for t, split in BF.TERMS.items():
    run(x, outs[t], split)
err = {f"t{t}_rel_err": float(np.abs(outs[t] - ref).max() / np.abs(ref).max()) for t in BF.TERMS}
ts = {t: [] for t in BF.TERMS}
for _ in range(reps):
    for t, split in BF.TERMS.items():
        t0 = time.perf_counter()
        run(x, outs[t], split)
        ts[t].append(time.perf_counter() - t0)
r = {"kind": kind, "rows": rows, "cols": cols, "n": n, "reps": reps, **err,
     **{f"t{t}_median_ms": float(np.median(v)) * 1e3 for t, v in ts.items()},
     **{f"t{t}_gops": 2 * n * rows * cols / float(np.median(v)) / 1e9 for t, v in ts.items()}}
r.update({f"t{t}_speedup_vs_3": r["t3_median_ms"] / r[f"t{t}_median_ms"] for t in BF.TERMS})
print(json.dumps(r), flush=True)
