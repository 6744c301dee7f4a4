"""The 3-term q4k bf16 product alone (459 rows, 15 calls, median) in whichever tree runs it: main vs this branch
across processes.  Usage: k3_tree.py q4k ROWS COLS LABEL"""
import sys, time, json, numpy as np
from corert.engines.native import matmul_bf16 as BF, matmul_i8
rng = np.random.default_rng(0)
kind, rows, cols, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), 459
nib = rng.integers(0, 256, (rows, cols // 2)).astype(np.uint8)
sc, mn = rng.integers(0, 64, (2, rows, cols // 32)).astype(np.uint8)
dd, dmin = rng.uniform(1e-4, 1e-3, (2, rows, cols // 256)).astype(np.float16).view(np.uint16)
parts = matmul_i8.layout_q4k(nib, sc, mn, dd, dmin)
x = rng.standard_normal((n, cols)).astype(np.float32)
out = np.empty((n, rows), np.float32)
split = 3 if hasattr(BF, "SPLIT_XW") else True
BF.q4k_product(*parts, x, out, 2, split)
ts = []
for _ in range(15):
    t0 = time.perf_counter(); BF.q4k_product(*parts, x, out, 2, split); ts.append(time.perf_counter() - t0)
print(json.dumps({"tree": sys.argv[4], "rows": rows, "cols": cols, "median_ms": float(np.median(ts)) * 1e3}))
