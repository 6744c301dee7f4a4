"""``corert bench batch``: continuous batching on the native engine (default) or the llama.cpp engine
(``--engine llama.cpp``) vs llama-cpp-python serving the same requests one after another.

N requests (distinct prompts, greedy, exactly --max-tokens tokens each: end-of-generation is ignored so
every side does the same work) are served at N = 1, 4, 8:
  corert   all N join one batching runner and decode in one forward per step: native's BatchRunner
           (kv_cache=paged by default), or the llama.cpp engine's runner (one llama_decode over N KV
           sequences; slots emptied before every run, so no prompt is reused across runs)
  llama    llama-cpp-python (same model, same threads) serves them one by one, as a single-sequence server
Aggregate decode tok/s = tokens generated after each request's first / wall time from the moment every
request has its first token to the last token (corert) or the sum of per-request decode times (llama).
End-to-end tok/s counts every token over the whole wall time, prompts included.  The corert streams are
checked to be identical whatever N (each stream's tokens equal what it produces alone) and in every round.
Every N runs --rounds times (3), the side that goes first alternating; a row reports each side's medians
and the median and min-max of the per-round ratios.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

from corert.compute import on_compute_thread
from corert.models.labels import model_label
from corert.tools.stats import MIN_ROUNDS, median, ratio_summary, ratios, spread

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three primary colors are", "import numpy as np\n\n# compute the mean of a list",
           "Water boils at a temperature of", "The Apache License grants you", "A haiku about the sea:"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", default="1,4,8", help="concurrent request counts (default 1,4,8)")
    # 128: at 32 tokens a run lasted ~7 s and two runs measured 2.56x and 4.00x at 8 streams
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per request (default 128)")
    p.add_argument("--rounds", type=int, default=MIN_ROUNDS,
                   help=f"rounds of every stream count, sides interleaved, at least {MIN_ROUNDS} (default {MIN_ROUNDS})")
    p.add_argument("--speculative", action="store_true",
                   help="grounded prompts at the largest --streams count: speculative:adaptive inside the batch vs "
                        "the same batch decoded plainly vs llama.cpp one after another (native engine); eight "
                        "distinct code and text edits whose answers copy the prompt, on qwen2.5-coder-0.5b-instruct "
                        "unless --model (a coder model returns the code verbatim around its edits, so lookup drafts "
                        "get accepted; SmolLM2 paraphrases)")


def _native(rt, path: str, n_max: int, n_ctx: int):
    from corert.engines.native.batching import BatchRunner  # noqa: F401  (import check before the load)

    kv = rt.host.create(rt.resolve("kv_cache", "native"), engine="native", model=path, config=rt.config)
    eng = rt.host.create(rt.resolve("engine", rt.config.engine), config=rt.config)  # native or native:<variant>
    return eng.load(path, tokenizer=rt.tokenizer(engine="native"), kv_cache=kv, n_ctx=n_ctx,
                    threads=rt.scheduler.thread_budget(), config=rt.config.evolve(n_seqs=n_max))


def _llama_cpp(rt, n_max: int):
    """The llama.cpp engine's batching runner over ``n_max`` sequences (its loaded model is the Runtime's)."""
    from corert.engines.llama_cpp_batching import BatchContext, LlamaBatchRunner

    loaded, _ = rt.load_generation_model()
    return loaded, LlamaBatchRunner(BatchContext.create(loaded, n_max))


def _native_runner(model):
    from corert.engines.native.batching import BatchRunner

    return BatchRunner(model, share_prefixes=False)


def _llama_cpp_runner(runner):
    runner.forget()  # every run evaluates its prompts in full, as the serial side does
    return runner


def _run_batched(r, prompts: list[list[int]], max_tokens: int, speculation=None) -> dict[str, Any]:
    from corert.interfaces import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    steps0 = r.steps
    extra = {} if speculation is None else {"speculation": speculation}  # native runners only
    t0 = time.perf_counter()
    sids = [r.add(p, params, is_eog=lambda t: False, **extra) for p in prompts]
    first_all = None
    driver_cpu = 0.0  # this thread's CPU in the decode steps: planning, sampling, bookkeeping (the forwards
    decode_steps = 0  # run on the compute thread), the serial part the cores idle through
    while r.active:
        c = time.thread_time()
        r.step()
        if first_all is not None:
            driver_cpu += time.thread_time() - c
            decode_steps += 1
        if first_all is None and all(r.streams[s].generated if s in r.streams else True for s in sids):
            first_all = time.perf_counter()
    end = time.perf_counter()
    outs = [r.result(s).generated for s in sids]
    n = len(prompts)
    return {"decode_tok_s": n * (max_tokens - 1) / (end - first_all), "e2e_tok_s": n * max_tokens / (end - t0),
            "seconds": end - t0, "steps": r.steps - steps0, "outputs": outs,
            "driver_cpu_ms_per_step": 1e3 * driver_cpu / max(1, decode_steps),
            "drafted": getattr(r, "drafted", 0), "accepted": getattr(r, "accepted", 0),
            "per_stream": [(r.result(s).drafted, r.result(s).accepted) for s in sids],
            "draft_seconds": getattr(r, "draft_seconds", 0.0), "rollback_seconds": getattr(r, "rollback_seconds", 0.0)}


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
    from corert.errors import InputError
    from corert.runtime import Runtime, RuntimeConfig

    from .layout_warmup import warm
    from .raw_llama import raw_llama

    counts = sorted({int(x) for x in str(args.streams).split(",") if x.strip()})
    if not counts or counts[0] < 1 or counts[-1] > len(PROMPTS):
        raise InputError(f"--streams must be between 1 and {len(PROMPTS)}")
    if args.rounds < MIN_ROUNDS:
        raise InputError(f"--rounds must be at least {MIN_ROUNDS}: the ratio's spread needs several rounds")
    from corert.implementation import engine_name

    engine = args.engine or "native"
    kind = engine_name(engine)  # a native variant (native:vnni-q8) batches as native does
    if kind not in ("native", "llama.cpp"):
        raise InputError(f"--engine must be native or llama.cpp (the engines with continuous batching), not {engine!r}")
    if args.speculative and kind != "native":
        raise InputError("--speculative runs on the native engine (its batch verifies drafts)")
    plugins = list(args.plugin or [])
    if kind == "native" and not any(p.startswith("kv_cache=") for p in plugins):
        plugins.append("kv_cache=paged:q8")
    if args.speculative and not any(p.startswith("speculative=") for p in plugins):
        plugins.append("speculative=speculative:adaptive")
    over: dict[str, Any] = {"engine": engine, "plugins": plugins, "n_ctx": 512}
    if args.model or args.speculative:
        from .batch_speculative import DEFAULT_MODEL

        over["model"] = args.model or DEFAULT_MODEL
    if args.threads:
        over["n_threads"] = args.threads
    base = RuntimeConfig.from_toml(args.config) if getattr(args, "config", None) else None
    rt = Runtime(RuntimeConfig.from_env(base), **over)
    # the native layout converted in a process of its own before this one loads and times it (layout_warmup.py)
    warm(str(rt.model_path()), engine, plugins, getattr(args, "config", None), label=model_label(rt.model_path()))
    try:
        if args.speculative:
            from . import batch_speculative

            return batch_speculative.run(args, rt, counts)
        path = str(rt.model_path())
        budget = rt.scheduler.thread_budget()
        threads = budget.numba_threads if kind == "native" else budget.llama_threads
        if kind == "native":
            model = _native(rt, path, counts[-1], 512)
            runner = lambda: _native_runner(model)  # noqa: E731
        else:
            model, llama_runner = _llama_cpp(rt, counts[-1])
            runner = lambda: _llama_cpp_runner(llama_runner)  # noqa: E731
        tok = model.tokenizer
        ids = [tok.encode(p) for p in PROMPTS]
        # flash attention as corert's llama.cpp contexts have it (rt.config.llama), on either engine's run
        llm = raw_llama(path, 512, threads, rt.config.llama.flash_attn)
        _run_batched(runner(), ids[:1], 4)  # warm-up: kernels compiled / loaded, caches hot
        on_compute_thread(_run_llama, llm, ids[:1], 4)
        runs: dict[int, dict[str, list[dict[str, Any]]]] = {n: {"corert": [], "llama": []} for n in counts}
        for k in range(args.rounds):
            for n in counts:  # the side that goes first alternates: load drift falls on both alike
                for side in (("corert", "llama") if k % 2 == 0 else ("llama", "corert")):
                    runs[n][side].append(_run_batched(runner(), ids[:n], args.max_tokens) if side == "corert" else
                                         on_compute_thread(_run_llama, llm, ids[:n], args.max_tokens))
        rows = [_row(n, runs[n]) for n in counts]
        # every stream's tokens, in every round and whatever the number of streams beside it
        outs = [(n, o) for n in counts for o in (r["outputs"] for r in runs[n]["corert"])]
        identical = all(a[i] == b[i] for _, a in outs for _, b in outs for i in range(min(len(a), len(b))))
        last = runs[counts[-1]]
        same_as_llama = sum(a == b for a, b in zip(last["corert"][-1]["outputs"], last["llama"][-1]["outputs"]))
        kv_stats = model.kv.stats() if hasattr(model.kv, "stats") else {}
        if kind == "native":
            model.close()
        else:
            llama_runner.context.close()
    finally:
        rt.close()
    best = rows[-1]
    return {"model": model_label(path), "engine": engine, "threads": threads, "max_tokens": args.max_tokens,
            "rounds": args.rounds, "kv_cache": rt.resolve("kv_cache", kind).label,
            "llama_flash_attn": rt.config.llama.flash_attn, "rows": rows,
            "streams_identical_whatever_n": identical,
            "same_tokens_as_llama_at_max_n": f"{same_as_llama}/{best['streams']}",
            "kv_stats": {k: kv_stats[k] for k in ("pages_total", "page_bytes", "evictions") if k in kv_stats},
            # the native engine's goal; the llama.cpp engine's is in `corert bench serve` (vs llama-server)
            **({"goal_4x_at_8": best["streams"] == 8 and best["decode_ratio"] >= 4.0} if kind == "native" else {})}


def _row(n: int, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One stream count over its rounds: each side's median figures and the per-round ratios' summary."""
    row: dict[str, Any] = {"streams": n}
    for side, rs in runs.items():
        row[side] = {k: median([r[k] for r in rs]) for k in ("decode_tok_s", "e2e_tok_s", "seconds")}
        row[side]["decode_tok_s_range"] = spread([r["decode_tok_s"] for r in rs])
        if side == "corert":
            row[side]["steps"] = rs[-1]["steps"]
            row[side]["driver_cpu_ms_per_step"] = median([r["driver_cpu_ms_per_step"] for r in rs])
    for k in ("decode", "e2e"):
        summary = ratio_summary(ratios([r[f"{k}_tok_s"] for r in runs["corert"]],
                                       [r[f"{k}_tok_s"] for r in runs["llama"]]))
        row.update({f"{k}_ratio": summary["median"], f"{k}_ratio_range": summary["range"],
                    f"{k}_ratio_rounds": summary["rounds"]})
    return row


def render(r: dict[str, Any]) -> str:
    if r.get("bench") == "batch --speculative":
        from . import batch_speculative

        return batch_speculative.render(r)
    lines = [f"continuous batching: {r['model']} ({r['max_tokens']} tokens per request, {r['threads']} threads, "
             f"{r.get('engine', 'native')} kv_cache={r['kv_cache']}, {r['rounds']} rounds, sides interleaved); "
             f"machine: {r['machine']['cpu']} ({r['machine']['cores']} cores)",
             f"  {'streams':>7} {'corert decode':>14} {'llama decode':>13} {'ratio (min-max)':>20} "
             f"{'corert e2e':>11} {'llama e2e':>10} {'ratio (min-max)':>20}   (tok/s aggregate, medians)"]
    for row in r["rows"]:
        c, ll = row["corert"], row["llama"]
        cells = {k: f"{row[f'{k}_ratio']:.2f}x ({row[f'{k}_ratio_range'][0]:.2f}-{row[f'{k}_ratio_range'][1]:.2f})"
                 for k in ("decode", "e2e")}
        lines.append(f"  {row['streams']:>7} {c['decode_tok_s']:>14.1f} {ll['decode_tok_s']:>13.1f} "
                     f"{cells['decode']:>20} {c['e2e_tok_s']:>11.1f} {ll['e2e_tok_s']:>10.1f} {cells['e2e']:>20}")
    if all("driver_cpu_ms_per_step" in row["corert"] for row in r["rows"]):
        lines.append("  corert driver CPU per decode step (planning, sampling, bookkeeping; the cores wait): " + ", ".join(
            f"{row['streams']} streams {row['corert']['driver_cpu_ms_per_step']:.2f} ms" for row in r["rows"]))
    lines.append(f"  each corert stream identical whatever the number of streams: {r['streams_identical_whatever_n']}; "
                 f"greedy tokens equal to llama.cpp's: {r['same_tokens_as_llama_at_max_n']}")
    if "goal_4x_at_8" in r:
        lines.append(f"  goal >= 4x llama-cpp-python at 8 streams: {'met' if r['goal_4x_at_8'] else 'NOT met'}"
                     "  (shared 2-core machine: timings are noisy)")
    return "\n".join(lines)
