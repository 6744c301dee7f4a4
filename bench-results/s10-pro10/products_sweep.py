"""A prompt's products on every layer of a model, as the forward runs them one layer after another (so each
layer's weights come from memory, not from a cache a repeated product keeps warm): the summed wall time of
one role's product over all layers, for row counts (a prompt's blocks) and for the L2 size the row tiles are
cut for (row_tiles.py; the machine's, and others to see whether the tiling's threshold fits).

    .venv/bin/python products_sweep.py gemma3-270m --rows 198 256 454 --l2 1 2 4 64
"""
from __future__ import annotations

import argparse
import json
import time

import attrs
import numpy as np

import corert
from corert.engines.native import model as native_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--rows", type=int, nargs="+", default=[198, 256, 454])
    ap.add_argument("--l2", type=float, nargs="+", default=[1.0], help="multiples of the machine's L2")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    res = []
    with corert.Runtime(engine="native", model=args.model, n_ctx=2048) as rt:
        rt.generate("warm up", max_tokens=2, temperature=0.0)
        tf = rt.load_generation_model()[0].transformer
        base = tf._products
        rng = np.random.default_rng(0)
        for role, attr in (("qkv", "wqkv"), ("o", "wo"), ("gate_up", "wgate_up"), ("down", "wdown")):
            ws = [getattr(layer, attr) for layer in tf.layers]
            for n in args.rows:
                x = rng.standard_normal((n, ws[0].cols)).astype(np.float32)
                for f in args.l2:
                    prods = attrs.evolve(base, l2=int(base.l2 * f))
                    for w in ws[:1]:
                        native_model.product(prods, w, x, role)  # compiles, out of the figures
                    ts = []
                    for _ in range(args.reps):
                        t0 = time.perf_counter()
                        for w in ws:
                            native_model.product(prods, w, x, role)
                        ts.append(time.perf_counter() - t0)
                    med = float(np.median(ts))
                    ops_ = 2.0 * n * sum(w.rows * w.cols for w in ws)
                    r = {"role": role, "rows": n, "l2_factor": f, "ms_all_layers": med * 1e3,
                         "ms_per_row": med * 1e3 / n, "gops": ops_ / med / 1e9}
                    res.append(r)
                    print(f"{role:8} n={n:4d} l2x{f:<5} {med * 1e3:8.2f} ms all layers  {med * 1e3 / n:.4f} ms/row "
                          f"{r['gops']:.0f} GOPS", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"model": args.model, "l2": base.l2, "results": res}, fh, indent=1)


if __name__ == "__main__":
    main()
