"""attend_contiguous alone on an f16 store, in whichever tree's python runs it: a prompt layer (454 rows in
blocks of 256 + 198, as the engine cuts it) and one decode row at positions 60 and 500, for gemma3's heads
(4 of 256 on 1 KV head, window 512), Qwen 0.5B's (14 of 64 on 2), SmolLM2's (9 of 64 on 3), Qwen 1.5B's
(12 of 128 on 2).  Prints the minimum over repetitions.

    python attn_micro.py LABEL
"""
import json
import sys
import time

import numpy as np

from corert.plugins.kv_cache import contiguous_attention as A

SHAPES = {"gemma3": (4, 1, 256, 512), "qwen05": (14, 2, 64, 0), "smollm2": (9, 3, 64, 0), "qwen15": (12, 2, 128, 0)}


def best(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


rng = np.random.default_rng(0)
res = {}
for name, (H, KV, HD, W) in SHAPES.items():
    k = rng.standard_normal((1, KV, 1024, HD)).astype(np.float16).view(np.uint16)
    v = rng.standard_normal((1, KV, 1024, HD)).astype(np.float16).view(np.uint16)
    q = rng.standard_normal((454, H, HD)).astype(np.float32)
    out = np.empty_like(q)
    seq, pos = np.zeros(454, np.int32), np.arange(454, dtype=np.int32)
    scale = np.float32(HD ** -0.5)

    def prompt():
        for a, b in ((0, 256), (256, 454)):
            A.attend_contiguous(q[a:b], k, v, seq[a:b], pos[a:b], scale, out[a:b], W)
    res[f"{name} prompt layer ms"] = best(prompt, 10) * 1e3
    for p in (60, 500):
        qq, oo, pp = q[:1], out[:1], np.array([p], np.int32)
        res[f"{name} decode p{p} us"] = best(lambda: A.attend_contiguous(qq, k, v, seq[:1], pp, scale, oo, W), 300) * 1e6
print(json.dumps({"side": sys.argv[1], **{k: round(v, 2) for k, v in res.items()}}))
