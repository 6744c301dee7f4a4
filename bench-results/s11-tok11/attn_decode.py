"""tok11: one decode row's attention at the four models' shapes over 500 positions of an f16 store, serial
(one thread) and parallel (2 threads, as a decode step runs it), best of 200; and the FMA count it does."""
import json
import sys
import time

import numpy as np

from corert.plugins.kv_cache import contiguous_attention as ca
from corert.tree import NO_TREE

SHAPES = {"qwen1.5b": (12, 2, 128), "smollm2": (9, 3, 64), "qwen0.5b": (14, 2, 64), "gemma3": (4, 1, 256)}


def best(fn, reps=200):
    fn()
    b = 1e9
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        b = min(b, time.perf_counter() - t0)
    return round(b * 1e6, 2)


def main(ctx=500):
    rng = np.random.default_rng(0)
    res = {}
    for name, (H, KV, hd) in SHAPES.items():
        q = rng.standard_normal((1, H, hd)).astype(np.float32)
        k = rng.standard_normal((1, KV, 2048, hd)).astype(np.float16).view(np.uint16)
        v = rng.standard_normal((1, KV, 2048, hd)).astype(np.float16).view(np.uint16)
        out = np.empty((1, H, hd), np.float32)
        seq, pos = np.zeros(1, np.int32), np.array([ctx - 1], np.int32)
        s = np.float32(0.1)
        res[name] = {"serial_us": best(lambda: ca._attend_serial(q, k, v, seq, pos, s, 0, NO_TREE, out)),
                     "attend_contiguous_us": best(lambda: ca.attend_contiguous(q, k, v, seq, pos, s, out)),
                     "fma": 2 * H * ctx * hd}
    print(json.dumps(res, indent=1))
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
