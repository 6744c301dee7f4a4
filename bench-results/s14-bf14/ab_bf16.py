"""In-process A/B: the amx int8 kernels (matmul_amx) against the bf16 tile kernels (matmul_bf16) on one
random matrix (bf16: one product per block, bf16x3: x and w split in hi + lo, three), interleaved in one process (the VM's process-to-process drift cancels), with each one's
error against a float64 product of the dequantized weights.  Usage: ab_bf16.py q4|q8 ROWS COLS N,N,..."""
import sys, time, json, numpy as np
from corert.engines.native import matmul_amx as AMX, matmul_bf16 as BF, matmul_i8
rng = np.random.default_rng(0)
kind, rows, cols = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if kind == "q4":
    nib = rng.integers(0, 256, (rows, cols // 2)).astype(np.uint8)
    sc = rng.uniform(0.01, 0.1, (rows, cols // 32)).astype(np.float16).astype(np.float32)
    of = rng.uniform(-0.1, 0.1, (rows, cols // 32)).astype(np.float16).astype(np.float32)
    q, d, m = matmul_i8.layout_q4(nib, sc, of)
    qv = np.empty((rows, cols)); blk = nib.reshape(rows, -1, 16)
    qv = np.concatenate([blk & 15, blk >> 4], axis=2).reshape(rows, cols).astype(np.float64)
    w = qv * np.repeat(sc, 32, 1) + np.repeat(of, 32, 1)
    fns = {"amx": lambda x, o: AMX.q4_product(q, d, m, x, o, 2 << 20, 2, 2),
           "bf16": lambda x, o: BF.q4_product(q, d, m, x, o, 2, False),
           "bf16x3": lambda x, o: BF.q4_product(q, d, m, x, o, 2, True)}
else:
    qi = rng.integers(-128, 128, (rows, cols)).astype(np.int8)
    bits = rng.uniform(0.01, 0.1, (rows, cols // 32)).astype(np.float16)
    q, d = matmul_i8.layout_q8(qi, bits.view(np.uint16), pack=False)
    w = qi.astype(np.float64) * np.repeat(bits.astype(np.float64), 32, 1)
    fns = {"amx": lambda x, o: AMX.q8_product(q, d, x, o, None, 2 << 20, 2, 2),
           "bf16": lambda x, o: BF.q8_product(q, d, x, o, 2, False),
           "bf16x3": lambda x, o: BF.q8_product(q, d, x, o, 2, True)}
for n in [int(v) for v in sys.argv[4].split(",")]:
    x = rng.standard_normal((n, cols)).astype(np.float32)
    ref = x.astype(np.float64) @ w.T
    outs = {k: np.empty((n, rows), np.float32) for k in fns}
    for k, f in fns.items():
        f(x, outs[k])
    err = {f"{k}_rel_err": float(np.abs(outs[k] - ref).max() / np.abs(ref).max()) for k in fns}
    ts = {k: [] for k in fns}
    for _ in range(int(sys.argv[5]) if len(sys.argv) > 5 else 20):
        for k, f in fns.items():
            t0 = time.perf_counter(); f(x, outs[k]); ts[k].append(time.perf_counter() - t0)
    r = {"kind": kind, "rows": rows, "cols": cols, "n": n, **err,
         **{f"{k}_median_ms": float(np.median(v)) * 1e3 for k, v in ts.items()},
         **{f"{k}_gops": 2 * n * rows * cols / float(np.median(v)) / 1e9 for k, v in ts.items()}}
    r["speedup"] = r["amx_median_ms"] / r["bf16_median_ms"]
    r["speedup_x3"] = r["amx_median_ms"] / r["bf16x3_median_ms"]
    print(json.dumps(r), flush=True)
