"""Paired A/B of `corert bench batch`'s native side between two corert trees: each side's own python runs a
child that loads the model as the bench does (native engine, kv_cache=paged:q8, n_ctx 512), warms up, then
times ``rounds`` batched runs of the bench's first N prompts (greedy, --max-tokens each, end-of-generation
ignored) through the bench's own _run_batched; the sides alternate A B B A ... so drift hits both alike.
``--join`` also times a staggered run: N - 1 streams start, and the last prompt joins after 4 steps with
the bench's licence text (prompt chunks beside decode rows: where the row order matters).

    python batch_ab.py MODEL A=/path/a/.venv/bin/python B=/path/b/.venv/bin/python --streams 8 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r'''
import json, sys, time, warnings
warnings.simplefilter("ignore")
from corert.runtime import Runtime
from corert.tools.bench import batch
from corert.tools.corpus import corpus_file
from corert.interfaces import SamplingParams
model, rounds, max_tokens, n, join = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
rt = Runtime(model=model, engine="native", plugins=["kv_cache=paged:q8"], n_ctx=512)
m = batch._native(rt, str(rt.model_path()), n, 512)
ids = [m.tokenizer.encode(p) for p in batch.PROMPTS]
long = m.tokenizer.encode(corpus_file("license-apache2.txt").read_text(encoding="utf-8"))[:300]
batch._run_batched(batch._native_runner(m), ids[:1], 4)
import os
out = {"variant": m.transformer.variant, "spin": os.environ.get("GOMP_SPINCOUNT"), "runs": []}
for _ in range(rounds):
    r = batch._run_batched(batch._native_runner(m), ids[:n], max_tokens)
    row = {"decode_tok_s": r["decode_tok_s"], "e2e_tok_s": r["e2e_tok_s"], "steps": r["steps"], "outputs": r["outputs"]}
    if join:
        runner = batch._native_runner(m)
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
        sids = [runner.add(p, params, is_eog=lambda t: False) for p in ids[:n - 1]]
        t0 = time.perf_counter()
        for _ in range(4):
            runner.step()
        sids.append(runner.add(long, params, is_eog=lambda t: False))
        while runner.active:
            runner.step()
        row["join_seconds"] = time.perf_counter() - t0
        row["join_outputs"] = [runner.result(s).generated for s in sids]
    out["runs"].append(row)
m.close()
rt.close()
print(json.dumps(out))
'''


def main() -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "s10-pro10"))
    from gen_ab import side_arguments, side_runs

    ap = argparse.ArgumentParser()
    side_arguments(ap, pairs=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--join", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    sides = [s.split("=", 1) for s in args.sides]
    runs = {label: [] for label, _ in sides}
    for p, label, py, side_env in side_runs(args.sides, args.pairs):
        r = subprocess.run([py, "-c", CHILD, args.model, str(args.rounds), str(args.max_tokens), str(args.streams),
                            "1" if args.join else "0"], capture_output=True, text=True, timeout=600, env=side_env)
        if r.returncode:
            sys.exit(f"{label}: {r.stderr.strip()[-2000:]}")
        rs = json.loads(r.stdout.strip().splitlines()[-1])
        runs[label].append(rs)
        print(f"pair {p} {label} ({rs['variant']}, spin {rs['spin']}): decode {[round(x['decode_tok_s'], 1) for x in rs['runs']]} "
              f"e2e {[round(x['e2e_tok_s'], 1) for x in rs['runs']]}"
              + (f" join s {[round(x['join_seconds'], 3) for x in rs['runs']]}" if args.join else ""), flush=True)
    summary = {}
    for label, _ in sides:
        flat = [x for rs in runs[label] for x in rs["runs"]]
        summary[label] = {k: statistics.median(x[k] for x in flat) for k in ("decode_tok_s", "e2e_tok_s")}
        if args.join:
            summary[label]["join_seconds"] = statistics.median(x["join_seconds"] for x in flat)
        summary[label]["variant"] = runs[label][0]["variant"]
        summary[label]["spins"] = [rs["spin"] for rs in runs[label]]
        print(label, json.dumps(summary[label]))
    (a, _), (b, _) = sides
    keys = ("outputs", "join_outputs") if args.join else ("outputs",)
    flat = [x for lab in (a, b) for rs in runs[lab] for x in rs["runs"]]
    same = all(x[k] == flat[0][k] for x in flat for k in keys)
    print(f"identical outputs in every run of {a} and {b}: {same}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "streams": args.streams, "pairs": args.pairs, "rounds": args.rounds,
                       "max_tokens": args.max_tokens, "join": args.join, "identical_outputs": same,
                       "summary": summary,
                       "runs": {k: [[{kk: vv for kk, vv in x.items() if "outputs" not in kk} for x in rs["runs"]]
                                    for rs in v] for k, v in runs.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
