"""``corert bench scheduler``: interactive latency while batch generation saturates the machine.

For each scheduler, in one process run and through the same :class:`corert.Runtime` path:

1. idle    ``--requests`` interactive embeds of a short text (MiniLM, onnxruntime), one at a time, with a
           short pause between them: their latency (submit to result) on an otherwise idle runtime;
2. loaded  the same embeds (for at least ``--min-window`` seconds) while ``--batch-streams`` threads keep batch-priority generations running back
           to back (SmolLM2 by default, llama.cpp): their latency, and the batch tokens/s meanwhile.

Schedulers: ``work_stealing:inference`` (a core reserved for interactive work), ``work_stealing:balanced``
(the default), ``fifo`` (the reference) and ``threadpool``, a plain ``ThreadPoolExecutor`` with one worker
per core and the libraries' own thread defaults, as an app without a scheduler would run.  The goal:
work_stealing's loaded p95 ≤ 1.5x its idle p95; the batch throughput it gives up for that is reported
against the best batch figure of the run.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import threading
import time
from typing import Any

from corert import Implementation, hookimpl
from corert.interfaces import ThreadBudget
from corert.tools.stats import MIN_ROUNDS, percentile, ratio_summary

SIDES = ("work_stealing:inference", "work_stealing:balanced", "fifo", "threadpool")
TEXTS = ("how do I reset my password", "what's the weather like tomorrow", "book a table for two tonight",
         "transfer fifty dollars to my savings account", "play some relaxing music")
BATCH_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
GOAL = 1.5


# -- the plain ThreadPoolExecutor side ---------------------------------------------------------------------
class ThreadPoolScheduler:
    """What an app gets without a scheduler: a ThreadPoolExecutor with a worker per core (FIFO; priorities
    and timeouts ignored) and every pool at its library's default: llama-cpp-python n_threads = cores // 2,
    n_threads_batch = cores; onnxruntime intra-op = cores with spinning on."""

    name = "threadpool"

    def __init__(self, cores: int | None = None):
        self.cores = cores or len(os.sched_getaffinity(0))
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.cores)

    def submit(self, fn, *args, priority: str = "normal", timeout: float | None = None, **kwargs):
        return self._pool.submit(fn, *args, **kwargs)

    def thread_budget(self) -> ThreadBudget:
        n = self.cores
        return ThreadBudget(cores=n, llama_threads=max(1, n // 2), llama_batch_threads=n, ort_intra_op=n,
                            ort_inter_op=1, ort_spinning=True, numba_threads=n)

    def stats(self) -> dict[str, Any]:
        return {"scheduler": self.name, "workers": self.cores}

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_pending)


class _ThreadPoolPlugin:
    @hookimpl
    def register_schedulers(self, register):
        register(Implementation(area="scheduler", name="threadpool", priority=-100,
                                factory=lambda variant, config=None: ThreadPoolScheduler(
                                    getattr(config, "n_threads", None)),
                                description="plain ThreadPoolExecutor (bench baseline)"))


# -- the bench contract --------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=30,
                   help="interactive embeds per phase, at least (default 30)")
    p.add_argument("--min-window", type=float, default=3.0,
                   help="the loaded phase lasts at least this many seconds, for the batch tokens/s (3)")
    p.add_argument("--gap-ms", type=float, default=20.0, help="pause between interactive requests (20)")
    p.add_argument("--batch-streams", type=int, default=2,
                   help="threads submitting batch generations back to back (default 2)")
    p.add_argument("--batch-tokens", type=int, default=48, help="tokens per batch generation (default 48)")
    p.add_argument("--passes", type=int, default=MIN_ROUNDS,
                   help=f"passes over the sides, alternating their order, requests split between them, at least "
                        f"{MIN_ROUNDS} ({MIN_ROUNDS})")
    p.add_argument("--sides", default=",".join(SIDES), help=f"schedulers to compare (default {','.join(SIDES)})")


def _latencies(rt, n: int, gap: float) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        rt.embed([TEXTS[i % len(TEXTS)]], priority="interactive")
        out.append(time.perf_counter() - t0)
        time.sleep(gap)
    return out


def _summary(lat: list[float]) -> dict[str, float]:
    ms = [x * 1e3 for x in lat]
    return {"p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "max_ms": max(ms), "n": len(ms)}


def _measure(side: str, args, requests: int, min_window: float) -> dict[str, Any]:
    """One pass of one side: raw latencies (s) idle and loaded, batch tokens in the loaded window."""
    from corert import Runtime

    from corert.plugin_host import parse_selections

    # --plugin choices for the other areas apply to every side; the scheduler is the side's
    chosen = {area: str(sel).split("=", 1)[1] for area, sel in
              parse_selections(getattr(args, "plugin", None) or []).items()}
    # every request must be a scheduler task: on an engine with continuous batching (native, which auto
    # picks) the batch streams would wait on the batch service instead and the scheduler would see none
    kwargs: dict[str, Any] = {"plugins": {**chosen, "scheduler": side}, "n_seqs": 1,
                              "engine": getattr(args, "engine", None) or "llama.cpp"}
    if getattr(args, "threads", None):
        kwargs["n_threads"] = args.threads
    if getattr(args, "model", None):
        kwargs["model"] = args.model
    with Runtime(extra_plugins=[("bench_threadpool", _ThreadPoolPlugin())], **kwargs) as rt:
        budget = rt.scheduler.thread_budget()
        rt.embed(["warm up"], priority="interactive")
        rt.generate("Hi", max_tokens=2, temperature=0, priority="batch")
        idle = _latencies(rt, requests, args.gap_ms / 1e3)

        stop = threading.Event()
        stamps: list[list[float]] = [[] for _ in range(args.batch_streams)]  # when each batch token arrived
        running = threading.Barrier(args.batch_streams + 1)

        def feed(i: int) -> None:
            running.wait()
            while not stop.is_set():
                for chunk in rt.stream(f"({i}) {BATCH_PROMPT}", max_tokens=args.batch_tokens, temperature=0,
                                       priority="batch"):
                    now = time.perf_counter()
                    stamps[i].extend(now for _ in chunk.token_ids)

        feeders = [threading.Thread(target=feed, args=(i,), daemon=True) for i in range(args.batch_streams)]
        for f in feeders:
            f.start()
        running.wait()
        time.sleep(0.3)  # the batch generations are under way
        t0 = time.perf_counter()
        loaded: list[float] = []
        while len(loaded) < requests or time.perf_counter() - t0 < min_window:
            loaded += _latencies(rt, 1, args.gap_ms / 1e3)
        t1 = time.perf_counter()
        stop.set()
        for f in feeders:
            f.join()
        stats = rt.scheduler.stats()
    return {"idle": idle, "loaded": loaded, "window_s": t1 - t0,
            "batch_tokens": sum(t0 <= t <= t1 for st in stamps for t in st),
            "budget": {k: getattr(budget, k) for k in ("cores", "llama_threads", "ort_intra_op", "ort_spinning")},
            "stats": {k: stats[k] for k in ("steals", "queue_wait_ms_by_priority", "per_worker", "completed")
                      if k in stats}}


def run(args) -> dict[str, Any]:
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if args.passes < MIN_ROUNDS:
        from corert.errors import InputError

        raise InputError(f"--passes must be at least {MIN_ROUNDS}: the ratio's spread needs several passes")
    passes = args.passes
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    # sides run A B C D, then D C B A, ...: the machine's load drifts (it is shared), and the reversed
    # order spreads that drift over every side instead of charging it to whichever ran last
    raw: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    per_pass = max(1, -(-args.requests // passes))
    for k in range(passes):
        for side in (sides if k % 2 == 0 else sides[::-1]):
            raw[side].append(_measure(side, args, per_pass, args.min_window / passes))
    results = []
    for side in sides:
        runs = raw[side]
        idle_s = _summary([x for r in runs for x in r["idle"]])
        loaded_s = _summary([x for r in runs for x in r["loaded"]])
        window = sum(r["window_s"] for r in runs)
        # loaded p95 / idle p95 of each pass too: the pooled ratio's median and spread over passes
        pass_ratios = ratio_summary([_summary(r["loaded"])["p95_ms"] / _summary(r["idle"])["p95_ms"] for r in runs])
        results.append({"side": side, "idle": idle_s, "loaded": loaded_s,
                        "p95_ratio": loaded_s["p95_ms"] / idle_s["p95_ms"],
                        "p95_ratio_median": pass_ratios["median"], "p95_ratio_range": pass_ratios["range"],
                        "p95_ratio_rounds": pass_ratios["rounds"],
                        "batch_tok_s": sum(r["batch_tokens"] for r in runs) / window, "window_s": window,
                        "budget": runs[-1]["budget"], "stats": runs[-1]["stats"]})
    best_idle = min(r["idle"]["p95_ms"] for r in results)
    best_batch = max(r["batch_tok_s"] for r in results)
    for r in results:
        r["p95_vs_best_idle"] = r["loaded"]["p95_ms"] / best_idle
        r["batch_loss"] = 1.0 - r["batch_tok_s"] / best_batch if best_batch > 0 else float("nan")
    ws = [r for r in results if r["side"].startswith("work_stealing:inference")]
    return {"bench": "scheduler", "requests": args.requests, "passes": passes, "gap_ms": args.gap_ms,
            "batch_streams": args.batch_streams, "batch_tokens": args.batch_tokens,
            "loadavg_1m_before": load_before,
            "loadavg_1m_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "goal": f"work_stealing:inference loaded p95 <= {GOAL}x idle p95",
            "goal_met": all(r["p95_ratio"] <= GOAL for r in ws) if ws else None,
            "sides": results}


def render(result: dict[str, Any]) -> str:
    m = result.get("machine", {})
    lines = [f"scheduler bench: {result['requests']} interactive embeds (MiniLM) per phase "
             f"(in {result.get('passes', 1)} passes, side order alternating), "
             f"{result['batch_streams']} batch streams x {result['batch_tokens']} tokens",
             f"machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores; load avg before/after "
             f"{result['loadavg_1m_before']:.2f}/{result['loadavg_1m_after']:.2f}", "",
             f"{'scheduler':26} {'idle p50':>9} {'idle p95':>9} {'load p50':>9} {'load p95':>9} "
             f"{'p95 x':>6} {'per pass: median (min-max)':>27} {'x best idle':>11} {'batch tok/s':>11} "
             f"{'batch loss':>10}"]
    for r in result["sides"]:
        lo, hi = r["p95_ratio_range"]
        per_pass = f"{r['p95_ratio_median']:.2f} ({lo:.2f}-{hi:.2f})"
        lines.append(f"{r['side']:26} {r['idle']['p50_ms']:8.2f}m {r['idle']['p95_ms']:8.2f}m "
                     f"{r['loaded']['p50_ms']:8.2f}m {r['loaded']['p95_ms']:8.2f}m {r['p95_ratio']:6.2f} "
                     f"{per_pass:>27} "
                     f"{r['p95_vs_best_idle']:11.2f} {r['batch_tok_s']:11.1f} {r['batch_loss'] * 100:9.1f}%")
    lines += ["", "scheduler stats (last pass): steals, interactive queue wait p95, busy seconds per worker"]
    for r in result["sides"]:
        st = r.get("stats", {})
        if "per_worker" not in st:
            continue
        qw = st["queue_wait_ms_by_priority"]["interactive"]["p95"]
        busy = ", ".join(f"{w['lane']} {w['busy_s']:.2f}s" for w in st["per_worker"])
        lines.append(f"  {r['side']:26} steals {st['steals']:3d}  queue wait p95 "
                     f"{'-' if qw is None else f'{qw:.2f}ms'}  busy: {busy}")
    verdict = {True: "met", False: "NOT met", None: "not measured (side not run)"}[result["goal_met"]]
    lines += ["", f"goal ({result['goal']}): {verdict}",
              "latencies in ms (m); 'p95 x' = loaded p95 / the same scheduler's idle p95 (all passes pooled, then per pass); batch loss is "
              "against the best batch tok/s of this run"]
    return "\n".join(lines)
