"""tok11: where one decode token's wall time goes, op by op, outside the products (native engine, 2 threads).

Every numba entry point a decode step calls is wrapped by a timer (products, row ops, KV write / attend,
embedding); the Python around them is what is left of the forward.  Outside the forward: the session's own
Python (reserve, the compute-thread hop), the sampler and the generation loop (detokenize, stops).
The wrappers' own cost is measured (an empty wrapped call) and reported, not subtracted.

    python prof_step.py MODEL [MODEL ...] --json out.json
"""
import argparse
import json
import time
from collections import defaultdict

import numpy as np

import corert
from corert.engines.native import matmul_i8, model as native_model, ops, dequant, session as native_session
from corert import sampling, numba_setup, generation

sec = defaultdict(float)
calls = defaultdict(int)


def wrap(label, fn):
    def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            sec[label] += time.perf_counter() - t0
            calls[label] += 1
    return timed


def patch_module(mod, names, label):
    for name in names:
        if hasattr(mod, name):
            setattr(mod, name, wrap(f"{label}:{name}", getattr(mod, name)))


patch_module(matmul_i8, ("q4k_product", "q4_product", "int8_product", "q6_packed_product", "q5_packed_product"),
             "product")
# the row ops are reached through ops.SERIAL (an attrs bundle made at import): rebuild it with timed members
ops.SERIAL = ops.RowOps(*(wrap(f"rowop:{f}", getattr(ops.SERIAL, f)) for f in
                          ("rmsnorm", "split_qkv", "split_qkv_normed", "add_rmsnorm", "add_normed", "gated")))
dequant.embed_rows = wrap("embed_rows", dequant.embed_rows)
T = native_model.Transformer
T.forward = wrap("forward", T.forward)
T._mm = wrap("_mm", T._mm)
S = native_session.NativeSession
S._forward = wrap("session._forward", S._forward)
numba_setup.run_parallel = wrap("run_parallel", numba_setup.run_parallel)
sampling.Sampler.__call__ = wrap("sampler", sampling.Sampler.__call__)
generation._Run._piece = wrap("run._piece", generation._Run._piece)


def empty_wrapper_cost() -> float:
    f = wrap("_calib", lambda: None)
    t0 = time.perf_counter()
    for _ in range(20000):
        f()
    dt = (time.perf_counter() - t0) / 20000
    sec.pop("_calib"); calls.pop("_calib")
    return dt


def profile(model: str, tokens: int) -> dict:
    out = {"model": model, "threads": 2, "wrapper_us": round(empty_wrapper_cost() * 1e6, 3)}
    from corert.tools.bench.generate import default_prompt
    prompt = default_prompt()
    with corert.Runtime(engine="native", model=model, n_threads=2, n_ctx=2048) as rt:
        rt.generate("warm up", max_tokens=4, temperature=0)
        kv = rt.load_generation_model()[0].kv
        kv.attend = wrap("kv.attend", kv.attend)
        kv.write = wrap("kv.write", kv.write)
        kv.reserve = wrap("kv.reserve", kv.reserve)
        for rep in range(2):
            rt.generate(f"({rep}) " + prompt, max_tokens=1, temperature=0)  # prompt only: K/V, then decode alone
            sec.clear(); calls.clear()
            c1 = rt.generate(f"({rep}) " + prompt, max_tokens=1, temperature=0)
            one = {k: v for k, v in sec.items()}, dict(calls)
            sec.clear(); calls.clear()
            t0 = time.perf_counter()
            c = rt.generate(f"({rep}) " + prompt, max_tokens=tokens + 1, temperature=0)
            wall = time.perf_counter() - t0
            # the decode tokens only: this run's totals less the prompt-only run's (same prompt, prefix reused)
            n = c.timings.decode_tokens
            per = {k: round((v - one[0].get(k, 0.0)) * 1e6 / n, 2) for k, v in sec.items()}
            per_calls = {k: round((v - one[1].get(k, 0)) / n, 2) for k, v in calls.items()}
            out[f"run{rep}"] = {"decode_tokens": n, "decode_ms_per_token": round(c.timings.decode_ms / n, 3),
                                "us_per_token": dict(sorted(per.items(), key=lambda kv_: -kv_[1])),
                                "calls_per_token": per_calls}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--json")
    a = ap.parse_args()
    res = [profile(m, a.tokens) for m in a.models]
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
