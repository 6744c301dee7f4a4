"""main's vnni kernels (matmul_i8_main, a temporary copy) vs the branch's, alternating in one process."""
import sys, time, json
import numpy as np
from corert.engines.native import matmul_i8, matmul_i8_main, products
rng = np.random.default_rng(0)
def q4(rows, cols):
    packed = rng.integers(0, 256, (rows, cols // 2), dtype=np.uint8)
    d = rng.uniform(1e-3, 1e-2, (rows, cols // 32)).astype(np.float32)
    return matmul_i8.layout_q4(packed, d, -d * 8)
def q8(rows, cols):
    q = rng.integers(-127, 128, (rows, cols)).astype(np.int8)
    sc = rng.uniform(1e-3, 5e-2, (rows, cols // 32)).astype(np.float16).view(np.uint16)
    return matmul_i8.layout_q8(q, sc, pack=False)
shapes = {"smollm2": [("q4 3072x576", q4(3072, 576), 576), ("q4 576x1536", q4(576, 1536), 1536), ("q4 960x576", q4(960, 576), 576), ("q8 49152x576", q8(49152, 576), 576)],
          "qwen15": [("q4 17920x1536", q4(17920, 1536), 1536), ("q4 1536x8960", q4(1536, 8960), 8960)]}[sys.argv[1]]
ns = [int(a) for a in sys.argv[2:]]
new = products.I8Products()
res = []
for name, parts, cols in shapes:
    rows = parts[0].shape[0] * 16
    for n in ns:
        x = rng.standard_normal((n, cols)).astype(np.float32)
        tun = new._tuning(x)
        o1, o2 = np.empty((n, rows), np.float32), np.empty((n, rows), np.float32)
        reps = max(5, 2000 // n) if "49152" not in name else max(3, 200 // n)
        t = {"main": [], "branch": []}
        for rep in range(reps):
            t0 = time.perf_counter()
            if name.startswith("q4"): matmul_i8_main.q4_matmul(*parts, x, o1)
            else: matmul_i8_main.int8_matmul(*parts, x, o1, None)
            t1 = time.perf_counter()
            if name.startswith("q4"): matmul_i8.q4_matmul(*parts, x, o2, *tun)
            else: matmul_i8.int8_matmul(*parts, x, o2, None, *tun)
            t2 = time.perf_counter()
            t["main"].append(t1 - t0); t["branch"].append(t2 - t1)
        assert np.array_equal(o1, o2)
        r = {"product": name, "n": n, **{k: float(np.median(v[1:])) * 1e6 for k, v in t.items()}}
        res.append(r)
        print(f"{name} n={n}: main {r['main']:.1f} us, branch {r['branch']:.1f} us ({r['main'] / r['branch']:.3f}x)", flush=True)
print(json.dumps(res))
