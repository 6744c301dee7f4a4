"""Native decode speed of one tree (the corert installed in the running venv), as one JSON line: greedy
stream of --tokens tokens after a fixed prompt, --rounds times in one process; a round's speed is the tokens
after the first over the time from the first chunk to the last.  Run alternately from two worktrees' venvs
in one quiet slot (A/B of a kernel change, without the llama.cpp side)."""
import argparse
import json
import time

from corert import Runtime

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--tokens", type=int, default=128)
ap.add_argument("--label", default="")
args = ap.parse_args()
PROMPT = ("Write a Python function that parses an ISO 8601 date string and returns a datetime, "
          "handling time zones, and explain each step.")
speeds = []
with Runtime(engine="native", model=args.model, n_ctx=2048) as rt:
    rt.generate("Hello", max_tokens=4, temperature=0)
    for _ in range(args.rounds):
        times = []
        for chunk in rt.stream(PROMPT, max_tokens=args.tokens + 1, temperature=0, ignore_eos=True):
            times.append(time.perf_counter())
        speeds.append((len(times) - 1) / (times[-1] - times[0]))
print(json.dumps({"label": args.label, "decode_tok_s_rounds": speeds, "chunks": len(times)}))
