"""``corert bench batch``: continuous batching on the native engine vs llama-cpp-python serving the same
requests one after another.

N requests (distinct prompts, greedy, exactly --max-tokens tokens each: end-of-generation is ignored so
every side does the same work) are served at N = 1, 4, 8:
  corert   all N join one BatchRunner (kv_cache=paged by default) and decode in one forward per step
  llama    llama-cpp-python (same model, same threads) serves them one by one, as a single-sequence server
Aggregate decode tok/s = tokens generated after each request's first / wall time from the moment every
request has its first token to the last token (corert) or the sum of per-request decode times (llama).
End-to-end tok/s counts every token over the whole wall time, prompts included.  The corert streams are
checked to be identical whatever N (each stream's tokens equal what it produces alone).
"""
from __future__ import annotations

import argparse
import time
from types import SimpleNamespace
from typing import Any

from ..compute import on_compute_thread
from .labels import model_label

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three primary colors are", "import numpy as np\n\n# compute the mean of a list",
           "Water boils at a temperature of", "The Apache License grants you", "A haiku about the sea:"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", default="1,4,8", help="concurrent request counts (default 1,4,8)")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per request (default 32)")


def _native(rt, path: str, n_max: int, n_ctx: int):
    from ..engines.native.batching import BatchRunner  # noqa: F401  (import check before the load)

    kv = rt.host.create(rt.resolve("kv_cache", "native"), engine="native", model=path, config=rt.config)
    eng = rt.host.create(rt.resolve("engine", "native"), config=rt.config)
    return eng.load(path, tokenizer=rt.tokenizer(engine="native"), kv_cache=kv, n_ctx=n_ctx,
                    threads=rt.scheduler.thread_budget(), config=SimpleNamespace(n_seqs=n_max))


def _run_native(model, prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
    from ..engines.native.batching import BatchRunner
    from ..interfaces import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    r = BatchRunner(model, share_prefixes=False)
    t0 = time.perf_counter()
    sids = [r.add(p, params, is_eog=lambda t: False) for p in prompts]
    first_all = None
    while r.active:
        r.step()
        if first_all is None and all(r.streams[s].generated if s in r.streams else True for s in sids):
            first_all = time.perf_counter()
    end = time.perf_counter()
    outs = [r.result(s).generated for s in sids]
    n = len(prompts)
    return {"decode_tok_s": n * (max_tokens - 1) / (end - first_all), "e2e_tok_s": n * max_tokens / (end - t0),
            "seconds": end - t0, "steps": r.steps, "outputs": outs}


def _run_llama(llm, prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
    """Run on the compute thread (corert.compute), like corert's forwards: one OpenMP team."""
    decode_s, outs = 0.0, []
    t0 = time.perf_counter()
    for p in prompts:
        out, first = [], None
        for tok in llm.generate(p, temp=0.0, top_k=1, reset=True):
            out.append(int(tok))
            if first is None:
                first = time.perf_counter()
            if len(out) == max_tokens:
                break
        decode_s += time.perf_counter() - first
        outs.append(out)
    end = time.perf_counter()
    n = len(prompts)
    return {"decode_tok_s": n * (max_tokens - 1) / decode_s, "e2e_tok_s": n * max_tokens / (end - t0),
            "seconds": end - t0, "outputs": outs}


def run(args) -> dict[str, Any]:
    from ..llama_lib import llama_cpp, prepare
    from ..errors import InputError
    from ..runtime import Runtime, RuntimeConfig

    counts = sorted({int(x) for x in str(args.streams).split(",") if x.strip()})
    if not counts or counts[0] < 1 or counts[-1] > len(PROMPTS):
        raise InputError(f"--streams must be between 1 and {len(PROMPTS)}")
    plugins = list(args.plugin or [])
    if not any(p.startswith("kv_cache=") for p in plugins):
        plugins.append("kv_cache=paged:q8")
    over: dict[str, Any] = {"engine": "native", "plugins": plugins}
    if args.model:
        over["model"] = args.model
    if args.threads:
        over["n_threads"] = args.threads
    base = RuntimeConfig.from_toml(args.config) if getattr(args, "config", None) else None
    rt = Runtime(RuntimeConfig.from_env(base), **over)
    try:
        path = str(rt.model_path())
        threads = rt.scheduler.thread_budget().numba_threads
        model = _native(rt, path, counts[-1], 512)
        tok = model.tokenizer
        ids = [tok.encode(p) for p in PROMPTS]
        prepare(path)
        llm = llama_cpp().Llama(model_path=path, n_ctx=512, n_threads=threads, n_threads_batch=threads,
                                verbose=False)
        _run_native(model, ids[:1], 4)  # warm-up: kernels compiled / loaded, caches hot
        on_compute_thread(_run_llama, llm, ids[:1], 4)
        rows = []
        for n in counts:
            nat = _run_native(model, ids[:n], args.max_tokens)
            lla = on_compute_thread(_run_llama, llm, ids[:n], args.max_tokens)
            rows.append({"streams": n, "corert": nat, "llama": lla,
                         "decode_ratio": nat["decode_tok_s"] / lla["decode_tok_s"],
                         "e2e_ratio": nat["e2e_tok_s"] / lla["e2e_tok_s"]})
        by_n = {r["streams"]: r["corert"]["outputs"] for r in rows}
        identical = all(by_n[n][i] == by_n[counts[0]][i] for n in counts for i in range(min(n, counts[0])))
        identical = identical and all(by_n[n][i] == by_n[m][i] for n in counts for m in counts
                                      for i in range(min(n, m)))
        same_as_llama = sum(a == b for r in rows[-1:] for a, b in zip(r["corert"]["outputs"],
                                                                        r["llama"]["outputs"]))
        kv_stats = model.kv.stats() if hasattr(model.kv, "stats") else {}
        model.close()
    finally:
        rt.close()
    for r in rows:
        for side in ("corert", "llama"):
            r[side].pop("outputs")
    best = rows[-1]
    return {"model": model_label(path), "threads": threads, "max_tokens": args.max_tokens,
            "kv_cache": rt.resolve("kv_cache", "native").label, "rows": rows,
            "streams_identical_whatever_n": identical,
            "same_tokens_as_llama_at_max_n": f"{same_as_llama}/{best['streams']}",
            "kv_stats": {k: kv_stats[k] for k in ("pages_total", "page_bytes", "evictions") if k in kv_stats},
            "goal_4x_at_8": best["streams"] == 8 and best["decode_ratio"] >= 4.0}


def render(r: dict[str, Any]) -> str:
    lines = [f"continuous batching: {r['model']} ({r['max_tokens']} tokens per request, {r['threads']} threads, "
             f"native kv_cache={r['kv_cache']}); machine: {r['machine']['cpu']} ({r['machine']['cores']} cores)",
             f"  {'streams':>7} {'corert decode':>14} {'llama decode':>13} {'ratio':>7} {'corert e2e':>11} "
             f"{'llama e2e':>10} {'ratio':>7}   (tok/s, aggregate)"]
    for row in r["rows"]:
        c, ll = row["corert"], row["llama"]
        lines.append(f"  {row['streams']:>7} {c['decode_tok_s']:>14.1f} {ll['decode_tok_s']:>13.1f} "
                     f"{row['decode_ratio']:>6.2f}x {c['e2e_tok_s']:>11.1f} {ll['e2e_tok_s']:>10.1f} "
                     f"{row['e2e_ratio']:>6.2f}x")
    lines.append(f"  each corert stream identical whatever the number of streams: {r['streams_identical_whatever_n']}; "
                 f"greedy tokens equal to llama.cpp's: {r['same_tokens_as_llama_at_max_n']}")
    lines.append(f"  goal >= 4x llama-cpp-python at 8 streams: {'met' if r['goal_4x_at_8'] else 'NOT met'}"
                 "  (shared 2-core machine: timings are noisy)")
    return "\n".join(lines)
