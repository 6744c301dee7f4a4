"""In-process A/B: main's amx kernels (scratch copies core/engines/native/_amx_main.py and _i8_main.py made from
main with `git show`, imports pointed at each other) against the tree's, interleaved in one process: the VM's
process-to-process drift (up to 40%) cancels.  Usage: ab_inprocess.py q4|q8|q6 ROWS COLS N,N,..."""
import sys, time, json, numpy as np
from corert.engines.native import matmul_amx as NEW, _amx_main as OLD, matmul_i8
rng=np.random.default_rng(0)
kind, rows, cols = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if kind == "q4":
    nib = rng.integers(0,256,(rows,cols//2)).astype(np.uint8)
    parts = matmul_i8.layout_q4(nib, rng.uniform(0.01,0.1,(rows,cols//32)).astype(np.float32), rng.uniform(-0.1,0.1,(rows,cols//32)).astype(np.float32))
    fns = {"main": lambda x, o: OLD.q4_product(*parts, x, o, 2<<20, 2, 2), "new": lambda x, o: NEW.q4_product(*parts, x, o, 2<<20, 2, 2)}
elif kind == "q8":
    q = rng.integers(-128, 128, (rows, cols)).astype(np.int8)
    bits = rng.uniform(0.01, 0.1, (rows, cols // 32)).astype(np.float16).view(np.uint16)
    parts = matmul_i8.layout_q8(q, bits, pack=False)
    fns = {"main": lambda x, o: OLD.q8_product(*parts, x, o, None, 2<<20, 2, 2), "new": lambda x, o: NEW.q8_product(*parts, x, o, None, 2<<20, 2, 2)}
else:
    q = rng.integers(-32, 32, (rows, cols)).astype(np.int8)
    sub = rng.integers(-128, 128, (rows, cols // 16)).astype(np.int8)
    sup = rng.uniform(1e-3, 1e-2, (rows, cols // 256)).astype(np.float32)
    q6, d6, s6 = matmul_i8.layout_q6(q, sub, sup)
    fns = {"main": lambda x, o: OLD.q6_packed_product(q6, d6, x, o, s6, 2<<20, 2, 2), "new": lambda x, o: NEW.q6_packed_product(q6, d6, x, o, s6, 2<<20, 2, 2)}
res = []
for n in [int(v) for v in sys.argv[4].split(",")]:
    x = rng.standard_normal((n,cols)).astype(np.float32)
    outs = {k: np.empty((n,rows),np.float32) for k in fns}
    for k, f in fns.items(): f(x, outs[k])
    assert np.array_equal(outs["main"].view(np.uint32), outs["new"].view(np.uint32))
    ts = {k: [] for k in fns}
    for _ in range(30):
        for k, f in fns.items():
            t0=time.perf_counter(); f(x, outs[k]); ts[k].append(time.perf_counter()-t0)
    r = {"kind": kind, "rows": rows, "cols": cols, "n": n, **{f"{k}_median_ms": float(np.median(v))*1e3 for k, v in ts.items()}, **{f"{k}_min_ms": float(min(v))*1e3 for k, v in ts.items()}}
    r["speedup_median"] = r["main_median_ms"] / r["new_median_ms"]
    print(json.dumps(r), flush=True)
