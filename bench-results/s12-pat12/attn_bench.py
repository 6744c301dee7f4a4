"""Prompt attention alone on the contiguous f16 store, at the prompt shapes of gemma3-270m (4 heads on 1 KV
head, head_dim 256, its local layers' window 512) and Qwen 0.5B (14 on 2, head_dim 64): one 454-row causal
prompt at the engine's thread count.  Run with each checkout's own python to A/B two checkouts; ``--save``
keeps the outputs so the other run can ``--check`` it gives the same bits.

    .venv/bin/python bench-results/s12-pat12/attn_bench.py --json out.json [--save x.npz | --check x.npz]
"""
import argparse
import json
import time

import numpy as np

from corert.plugins.kv_cache.contiguous_attention import attend_contiguous

SHAPES = {"gemma3": (4, 1, 256, 512), "qwen05": (14, 2, 64, 0)}


def case(name, n=454, ctx=2048):
    n_heads, n_kv, hd, window = SHAPES[name]
    rng = np.random.default_rng(7)
    q = rng.standard_normal((n, n_heads, hd)).astype(np.float32)
    kv = [rng.standard_normal((1, n_kv, ctx, hd)).astype(np.float16).view(np.uint16) for _ in range(2)]
    return q, kv[0], kv[1], np.zeros(n, np.int64), np.arange(n, dtype=np.int64), np.float32(hd ** -0.5), window


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--save")
    ap.add_argument("--check")
    ap.add_argument("--reps", type=int, default=40)
    args = ap.parse_args()
    res, outs = {}, {}
    for name in SHAPES:
        q, k, v, s, p, scale, window = case(name)
        out = np.empty_like(q)
        attend_contiguous(q, k, v, s, p, scale, out, window)
        ts = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            attend_contiguous(q, k, v, s, p, scale, out, window)
            ts.append(time.perf_counter() - t0)
        res[name] = {"median_ms": float(np.median(ts)) * 1e3, "min_ms": float(min(ts)) * 1e3}
        outs[name] = out.copy()
        print(f"{name}: median {res[name]['median_ms']:.3f} ms, min {res[name]['min_ms']:.3f} ms (one layer)")
    if args.save:
        np.savez(args.save, **outs)
    if args.check:
        ref = np.load(args.check)
        for name in SHAPES:
            same = np.array_equal(ref[name].view(np.uint32), outs[name].view(np.uint32))
            res[name]["same_bits_as_saved"] = bool(same)
            print(f"{name}: same bits as {args.check}: {same}")
    if args.json:
        json.dump(res, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
