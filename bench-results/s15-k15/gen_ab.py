"""Paired A/B of two corert trees on one model: each side's own python runs a child process that loads the
model on the native engine (n_ctx 2048) and times ``rounds`` generations of the bench's default prompt
(454 tokens, a round number up front as `corert bench generate` does); the sides alternate A B A B ... so
drift on the machine hits both alike.  Prints and writes per-side prompt and decode tok/s, per pair.

    python gen_ab.py MODEL A=/path/to/a/.venv/bin/python B=/path/to/b/.venv/bin/python --pairs 3 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r'''
import json, sys, warnings
warnings.simplefilter("ignore")
from corert import Runtime
model, prompt, rounds, max_tokens, engine = sys.argv[1], sys.stdin.read(), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with Runtime(model=model, engine=engine, n_ctx=2048) as rt:
    rt.generate("(0) " + prompt, max_tokens=4, temperature=0.0)
    out = []
    for i in range(rounds):
        c = rt.generate(f"({i + 1}) " + prompt, max_tokens=max_tokens, temperature=0.0)
        t = c.timings
        out.append({"prompt_tokens": c.usage.prompt_tokens, "prompt_tok_s": c.usage.prompt_tokens / (t.prompt_ms / 1e3),
                    "decode_tok_s": t.decode_tokens / (t.decode_ms / 1e3) if t.decode_ms else 0.0,
                    "ids": list(c.token_ids)})
print(json.dumps(out))
'''


def side_arguments(ap: argparse.ArgumentParser, pairs: int = 3) -> None:
    """The two sides and the pair count (also batch_ab.py's, s15-r15)."""
    ap.add_argument("model")
    ap.add_argument("sides", nargs=2, help="LABEL=python or LABEL=python,ENV=VALUE,... (that side's environment)")
    ap.add_argument("--pairs", type=int, default=pairs)


def side_runs(specs: list[str], pairs: int):
    """(label, python, environment) of every child to run, the sides alternating A B B A ..."""
    sides = [s.split("=", 1) for s in specs]
    env = {}
    for label, spec in sides:
        py, *kvs = spec.split(",")
        env[label] = (py, dict(os.environ, **dict(kv.split("=", 1) for kv in kvs)))
    for p in range(pairs):
        for label, _ in (sides if p % 2 == 0 else sides[::-1]):
            yield (p, label, *env[label])


def main() -> None:
    ap = argparse.ArgumentParser()
    side_arguments(ap)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--engine", default="native")
    ap.add_argument("--json")
    args = ap.parse_args()
    from corert.tools.bench.generate import default_prompt

    prompt = default_prompt()
    sides = [s.split("=", 1) for s in args.sides]
    runs = {label: [] for label, _ in sides}
    for p, label, py, side_env in side_runs(args.sides, args.pairs):
        r = subprocess.run([py, "-c", CHILD, args.model, str(args.rounds), str(args.max_tokens), args.engine],
                           input=prompt, capture_output=True, text=True, timeout=600, env=side_env)
        if r.returncode:
            sys.exit(f"{label}: {r.stderr.strip().splitlines()[-1]}")
        rs = json.loads(r.stdout.strip().splitlines()[-1])
        runs[label].append(rs)
        print(f"pair {p} {label}: prompt {[round(x['prompt_tok_s'], 1) for x in rs]} decode "
              f"{[round(x['decode_tok_s'], 1) for x in rs]}", flush=True)
    summary = {}
    for label, _ in sides:
        pr = [x["prompt_tok_s"] for rs in runs[label] for x in rs]
        de = [x["decode_tok_s"] for rs in runs[label] for x in rs]
        summary[label] = {"prompt_tok_s_median": statistics.median(pr), "decode_tok_s_median": statistics.median(de),
                          "prompt_tok_s_per_run": [statistics.median([x["prompt_tok_s"] for x in rs]) for rs in runs[label]],
                          "decode_tok_s_per_run": [statistics.median([x["decode_tok_s"] for x in rs]) for rs in runs[label]]}
        print(label, json.dumps(summary[label]))
    (a, _), (b, _) = sides
    same = all(x["ids"] == y["ids"] for ra, rb in zip(runs[a], runs[b]) for x, y in zip(ra, rb))
    print(f"identical ids {a} vs {b}: {same}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "engine": args.engine, "pairs": args.pairs, "rounds": args.rounds,
                       "max_tokens": args.max_tokens, "identical_ids": same, "summary": summary,
                       "runs": {k: [[{kk: vv for kk, vv in x.items() if kk != "ids"} for x in rs] for rs in v]
                                for k, v in runs.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
