import os, sys, time, numpy as np
"""attn_bench.py's prompt attention with the value loops cut (ca_nopv) or the score loops cut (ca_noqk) from copies of
contiguous_attention.py (cache=False) in the directory argv[1]: how the time splits between q.k and p.v."""
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import importlib
from attn_bench import case, SHAPES
for mod in ("ca_full", "ca_nopv", "ca_noqk"):
    m = importlib.import_module(mod)
    for name in SHAPES:
        q, k, v, s, p, scale, w = case(name); out = np.empty_like(q)
        m.attend_contiguous(q, k, v, s, p, scale, out, w)
        ts = []
        for _ in range(20):
            t0 = time.perf_counter(); m.attend_contiguous(q, k, v, s, p, scale, out, w); ts.append(time.perf_counter() - t0)
        print(mod, name, f"{np.median(ts)*1e3:.2f} ms")
