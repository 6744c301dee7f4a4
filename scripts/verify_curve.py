"""What verifying several positions in one forward costs on the native engine: the forward's wall time for
1, 2, 4, 8, 16 rows per stream from a decode position (the same K/V each time), for one stream or several,
split into the output head, the other products, attention and the rest.

A draft row pays off only when it costs less than the plain step's time per token, so this curve, not a
guessed slope, bounds what speculation can gain; the split says which per-row costs are not the weights'
stream.  Run it alone on the cores (wall time):

    .venv/bin/python scripts/verify_curve.py qwen2.5-coder-1.5b-instruct --json curve.json
    .venv/bin/python scripts/verify_curve.py qwen2.5-coder-0.5b-instruct --streams 8 --rows 1,2,3,4
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict

import numpy as np

import corert
import corert.numba_setup
from corert.engines.native import model as native_model
from corert.interfaces import reserve_rows
from corert.tools.prompts import GROUNDED
from profile_native import Clock  # this script's folder is on sys.path when it runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--rows", default="1,2,4,8,16", help="rows per stream, comma-separated")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--kv-cache", default=None, help="kv_cache plugin (default: the runtime's)")
    ap.add_argument("--engine", default="native", help="the native engine, or one of its variants (native:vnni-q8)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    split = Clock(time.perf_counter)  # wall time: the threads' work is what a verify waits for
    T = native_model.Transformer
    T._mm = split.wrap(lambda self, w, x, *role: "head" if w is self.output else "products", T._mm)
    plugins = {"kv_cache": args.kv_cache} if args.kv_cache else {}
    with corert.Runtime(engine=args.engine, model=args.model, plugins=plugins, n_seqs=max(args.streams, 1)) as rt:
        loaded = rt.load_generation_model()[0]
        kv = loaded.kv
        kv.attend = split.wrap(lambda *a: "attention", kv.attend)
        tok = loaded.tokenizer
        sessions = [loaded.session()] + [loaded.new_session() for _ in range(args.streams - 1)]
        for i, s in enumerate(sessions):  # a grounded prompt as the context, as speculation sees it
            s.eval(tok.encode(GROUNDED[i % len(GROUNDED)]))
        tf = loaded.transformer
        out = {"model": args.model, "engine": args.engine, "streams": args.streams, "threads": loaded.threads,
               "context": [len(s.tokens) for s in sessions], "kv_cache": rt.resolve("kv_cache", "native").label,
               "curve": []}
        for r in [int(x) for x in args.rows.split(",")]:
            ids = np.concatenate([np.asarray(s.tokens[-r:], np.int32) for s in sessions])  # real tokens
            seqs = np.repeat(np.asarray([s.seq for s in sessions], np.int32), r)
            pos = np.concatenate([np.arange(len(s.tokens), len(s.tokens) + r, dtype=np.int32) for s in sessions])
            every = np.arange(len(ids), dtype=np.int64)
            times, parts = [], defaultdict(list)
            for rep in range(args.repeats + 1):  # the first is a warm-up (numba's first call per shape)
                reserve_rows(kv, seqs, pos, ids)
                split.seconds.clear()
                t0 = time.perf_counter()
                corert.numba_setup.run_parallel(tf.forward, ids, seqs, pos, kv, every, threads=loaded.threads)
                dt = time.perf_counter() - t0
                for s in sessions:
                    kv.truncate(s.seq, len(s.tokens))
                if rep:
                    times.append(dt)
                    for k in ("head", "products", "attention"):
                        parts[k].append(split.seconds.get(k, 0.0))
            med = statistics.median(times)
            row = {"rows_per_stream": r, "rows": len(ids), "ms": med * 1e3,
                   **{f"{k}_ms": statistics.median(v) * 1e3 for k, v in parts.items()}}
            row["rest_ms"] = row["ms"] - sum(row[f"{k}_ms"] for k in parts)
            out["curve"].append(row)
        base = out["curve"][0]
        for row in out["curve"]:
            row["vs_first"] = row["ms"] / base["ms"]
            # what one row beyond the first size costs, against the first size's time per row
            extra = row["rows"] - base["rows"]
            row["extra_row_ms"] = (row["ms"] - base["ms"]) / extra if extra else None
            row["extra_row_vs_token"] = (row["extra_row_ms"] / (base["ms"] / base["rows"])) if extra else None
    for row in out["curve"]:
        print(f"{row['rows']:4d} rows  {row['ms']:8.2f} ms  x{row['vs_first']:.2f}  head {row['head_ms']:7.2f}  "
              f"products {row['products_ms']:7.2f}  attention {row['attention_ms']:6.2f}  rest {row['rest_ms']:6.2f}"
              + (f"  extra row {row['extra_row_ms']:.2f} ms = {row['extra_row_vs_token']:.2f} token"
                 if row["extra_row_ms"] else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
