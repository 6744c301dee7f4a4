"""Time vnni vs amx kernels on real Qwen 0.5B / 1.5B matrices at several row counts."""
import json, sys, time
import numpy as np, numba
from corert.models.store import ModelStore
from corert.models.gguf_header import read_header
from corert.engines.native.model import Transformer
from corert.engines.native import matmul_i8 as mi, matmul_amx as ma
from corert.cpu import l2_bytes
st = ModelStore(progress=False)
model, out_path = sys.argv[1], sys.argv[2]
ns = [int(a) for a in sys.argv[3].split(",")]
t = Transformer.load(read_header(str(st.resolve(model)), want_arrays=False), "vnni", "auto")
K = {"q8": (mi.int8_product, ma.q8_product), "q5": (mi.q5_packed_product, ma.q5_packed_product),
     "q6p": (mi.q6_packed_product, ma.q6_packed_product), "q4k": (mi.q4k_product, ma.q4k_product),
     "q4": (mi.q4_product, ma.q4_product)}
def kind(m):
    if m.kind == "q8" and mi.is_packed_q5(m.parts[0], m.cols): return "q5"
    if m.kind == "q6": return "q6p"
    return "q4k" if m.kind == "q4" and len(m.parts) == 2 else m.kind
layer = t.layers[0]
mats = []
for name, w in (("qkv", layer.wqkv), ("o", layer.wo), ("gate_up", layer.wgate_up), ("down", layer.wdown)):
    for i, m in enumerate(w.pieces if hasattr(w, "pieces") else [w]):
        mats.append((f"{name}{i}", m))
rows = []
th = numba.get_num_threads()
rng = np.random.default_rng(0)
for name, m in mats:
    k = kind(m)
    pre, post = (m.parts, (None,)) if k == "q8" else ((m.parts[:2], m.parts[2:]) if k == "q6p" else (m.parts, ()))
    for n in ns:
        x = rng.standard_normal((n, m.cols)).astype(np.float32)
        out = np.empty((n, m.rows), np.float32)
        r = {"matrix": name, "kind": k, "rows": m.rows, "cols": m.cols, "n": n}
        for label, fn in zip(("vnni", "amx"), K[k]):
            thr = th if n >= mi.PARALLEL_ROWS else 1
            fn(*pre, x, out, *post, l2_bytes(), thr, 2)
            reps = max(3, int(2e6 // (n * m.rows * m.cols / 1e3 + 1)))
            best = 1e9
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn(*pre, x, out, *post, l2_bytes(), thr, 2)
                best = min(best, (time.perf_counter() - t0) / reps)
            r[label + "_ms"] = round(best * 1e3, 4)
        r["speedup"] = round(r["vnni_ms"] / r["amx_ms"], 3)
        rows.append(r)
        print(r, flush=True)
json.dump({"model": model, "threads": th, "rows": rows}, open(out_path, "w"), indent=1)
