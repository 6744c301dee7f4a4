"""A decode step's products alone, in whichever tree's python runs this: every matrix of the model at one
row, one after another as a decode step runs them (the output head too), ``steps`` times; prints the median
wall time of one pass and its time per product.  Works with trees before and after the matrix role reached
the products (Transformer._mm(w, x[, role])).

    python decode_products.py smollm2-135m-instruct --steps 200
"""
from __future__ import annotations

import argparse
import inspect
import json
import time

import numpy as np

import corert
from corert.numba_setup import PARALLEL_LOCK, run_parallel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--direct", action="store_true",
                    help="also time each kernel called directly (no products.py / model.product Python), "
                         "alternating with the model's path (trees with matmul_i8.int8_product only)")
    args = ap.parse_args()
    with corert.Runtime(engine="native", model=args.model, n_ctx=2048) as rt:
        rt.generate("warm up", max_tokens=2, temperature=0.0)
        loaded = rt.load_generation_model()[0]
        tf = loaded.transformer
        roles = "role" in inspect.signature(type(tf)._mm).parameters
        mats = []
        for layer in tf.layers:
            mats += [(layer.wqkv, "qkv"), (layer.wo, "o"), (layer.wgate_up, "gate_up"), (layer.wdown, "down")]
        mats.append((tf.output, "output"))
        xs = {w.cols: np.random.default_rng(0).standard_normal((1, w.cols)).astype(np.float32) for w, _ in mats}

        def one_pass():
            for w, role in mats:
                tf._mm(w, xs[w.cols], role) if roles else tf._mm(w, xs[w.cols])

        def timed():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                one_pass()
            return time.perf_counter() - t0

        calls = direct_calls(tf, mats, xs) if args.direct else []

        def direct_pass():
            for fn, a in calls:
                fn(*a)

        def timed_direct():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                direct_pass()
            return time.perf_counter() - t0

        with PARALLEL_LOCK:
            run_parallel(one_pass, threads=loaded.threads)
            if calls:
                run_parallel(direct_pass, threads=loaded.threads)
            ts, td = [], []
            for _ in range(args.reps):
                ts.append(run_parallel(timed, threads=loaded.threads) / args.steps)
                if calls:
                    td.append(run_parallel(timed_direct, threads=loaded.threads) / args.steps)
    med = float(np.median(ts))
    out = {"model": args.model, "products": len(mats), "pass_ms": med * 1e3,
           "pass_ms_all": [t * 1e3 for t in ts], "us_per_product": med / len(mats) * 1e6}
    if td:
        out.update(direct_pass_ms=float(np.median(td)) * 1e3, direct_pass_ms_all=[t * 1e3 for t in td],
                   direct_calls=len(calls))
    print(json.dumps(out))


def direct_calls(tf, mats, xs):
    """(kernel, args) per matrix piece as products.I8Products would call it at one row."""
    from corert.engines.native import matmul_i8
    from corert.engines.native.weights import SplitMatrix

    prods = tf._products
    calls = []
    for w, role in mats:
        p = prods.for_matrix(role)
        x = xs[w.cols]
        for piece in (w.pieces if isinstance(w, SplitMatrix) else [w]):
            out = np.empty((1, piece.rows), np.float32)
            parts, tail = piece.parts, (p.l2, 1, p.levels)
            if piece.kind == "q8":
                q, d = parts
                if matmul_i8.is_packed_q5(q, x.shape[1]):
                    calls.append((matmul_i8.q5_packed_product, (q, d, x, out) + tail))
                else:
                    calls.append((matmul_i8.int8_product, (q, d, x, out, None) + tail))
            elif piece.kind == "q6":
                q, sub, sup = parts
                fn = matmul_i8.q6_packed_product if matmul_i8.is_packed_q6(q, x.shape[1]) else matmul_i8.int8_product
                calls.append((fn, (q, sub, x, out, sup) + tail))
            else:
                fn = matmul_i8.q4k_product if len(parts) == 5 else matmul_i8.q4_product
                calls.append((fn, tuple(parts) + (x, out) + tail))
    return calls


if __name__ == "__main__":
    main()
