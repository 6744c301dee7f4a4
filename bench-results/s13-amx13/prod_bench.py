"""Layer 0's products of a model alone, amx against vnni, at several row counts (interleaved repetitions, the
median of each).  Run from the worktree:  .venv/bin/python bench-results/s13-amx13/prod_bench.py MODEL --json OUT"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from corert.engines.native import model as native_model
from corert.engines.native.model import Transformer
from corert.models.gguf_header import read_header
from corert.models.store import ModelStore


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--rows", default="16,32,64,128,256")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--variants", default="vnni,amx")
    ap.add_argument("--json")
    args = ap.parse_args()
    header = read_header(str(ModelStore(progress=False).resolve(args.model)), want_arrays=False)
    tfs = {v: Transformer.load(header, v, "auto") for v in args.variants.split(",")}
    rng = np.random.default_rng(2)
    res = []
    for name in ("wqkv", "wo", "wgate_up", "wdown"):
        for n in [int(r) for r in args.rows.split(",")]:
            ws = {v: getattr(tf.layers[0], name) for v, tf in tfs.items()}
            w0 = next(iter(ws.values()))
            x = rng.standard_normal((n, w0.cols)).astype(np.float32)
            fns = {v: native_model.bind_product(tfs[v]._products, w, name) for v, w in ws.items()}
            for fn in fns.values():
                fn(x)
            ts = {v: [] for v in fns}
            for _ in range(args.reps):
                for v, fn in fns.items():
                    t0 = time.perf_counter()
                    fn(x)
                    ts[v].append(time.perf_counter() - t0)
            row = {"matrix": name, "kind": w0.kind, "rows": w0.rows, "cols": w0.cols, "n": n}
            for v, t in ts.items():
                med = float(np.median(t))
                row[f"{v}_ms"] = med * 1e3
                row[f"{v}_gops"] = 2.0 * n * w0.rows * w0.cols / med / 1e9
            res.append(row)
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "results": res}, f, indent=1)


if __name__ == "__main__":
    main()
