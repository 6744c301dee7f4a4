"""``corert bench serve``: OpenAI-compatible servers under N concurrent streaming clients, on loopback.

Every side is a server this benchmark starts (a subprocess, the same model file, the same threads) and
stops itself:
  corert-native     corert serve --engine native --plugin kv_cache=paged:q8 --n-seqs 8
  corert-llama      corert serve --engine llama.cpp --n-seqs 8 --set llama.flash_attn=true
  llama-cpp-python  python -m llama_cpp.server (--interrupt_requests False: with its default, each new
                    request cuts the running stream short; --flash_attn True, as the other llama.cpp sides)
  llama-server      llama.cpp's own server, -np 8 -cb, when --llama-server PATH is given
                    (scripts/build-llama-server.sh builds one)
N clients (1, 4, 8, 16) each stream one /v1/completions request, all released together: the same prompts on
every side, greedy, --max-tokens tokens asked, end-of-generation suppressed where the server has a way
(llama-cpp-python's min_tokens, llama-server's and corert serve's ignore_eos), so every side does the same
work; the tokens actually received are reported beside those asked.  Per side and N:
aggregate tok/s (tokens received / wall time from the first request to the last stream's end), TTFT p50 /
p95 (request sent → first text chunk) and the inter-token p95 (gaps between text chunks), the last two
pooled over every stream of every round.  Rounds interleave the sides (the first side rotates), so load
drift falls on all alike; ratios are per round, reported as median and min-max.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

import attrs

from corert.errors import InputError
from corert.tools.bench.server_procs import HOST, ServerSpec, get, start_all
from corert.tools.bench.stream_client import Round, concurrent_streams
from corert.tools.stats import MIN_ROUNDS, median, percentile, ratio_summary, ratios, spread

PROMPTS = [
    "Once upon a time, in a small village at the edge of a great forest,",
    "The history of the bicycle begins in the early nineteenth century, when",
    "Here is a detailed recipe for a simple tomato soup. First,",
    "The water cycle describes how water moves around the Earth. It starts",
    "def merge_sort(items):\n    \"\"\"Sort a list with merge sort.\"\"\"\n",
    "Dear hiring manager, I am writing to apply for the position of",
    "The three laws of motion, first written down by Isaac Newton, say that",
    "A beginner's guide to growing vegetables on a balcony: choose",
    "The old lighthouse keeper climbed the stairs every evening and",
    "Photosynthesis is the process by which green plants",
    "In this tutorial we will build a small web server in Python. We start",
    "The meeting notes from Monday: the team discussed",
    "Ten tips for a good night's sleep. 1.",
    "The city of Rome was founded, according to legend, by",
    "import json\n\n# read a config file and print every key\n",
    "The ship left the harbour at dawn, its sails",
]

SIDES = ("corert-native", "corert-llama", "llama-cpp-python", "llama-server")
CORERT_SIDES = ("corert-native", "corert-llama")
N_SEQS = 8  # server slots on every side that has them (the setting)
LISTENING = r"corert serve: listening on http://127\.0\.0\.1:(\d+)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", default="1,4,8,16", help="concurrent client counts (default 1,4,8,16)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens asked per stream (default 128)")
    p.add_argument("--rounds", type=int, default=MIN_ROUNDS,
                   help=f"rounds of every client count, sides interleaved (default {MIN_ROUNDS})")
    p.add_argument("--side-rounds", action="append", default=[], metavar="SIDE=N",
                   help="fewer rounds for one side, e.g. llama-cpp-python=1 (it serves one request at a time)")
    p.add_argument("--sides", help=f"comma-separated, of {', '.join(SIDES)} (default: all; llama-server only "
                                   "with --llama-server)")
    p.add_argument("--llama-server", metavar="PATH", help="llama.cpp's llama-server binary (see "
                                                          "scripts/build-llama-server.sh)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take (default 600)")
    p.add_argument("--start-timeout", type=float, default=1200.0,
                   help="seconds a server may take to load (default 1200: a first run compiles kernels)")
    p.add_argument("--plot", metavar="PNG", help="tok/s and TTFT p95 against clients, per side")
    r = p.add_argument_group("--ray: Ray Serve replicas against the plain server (corert.tools.bench.serve_ray)")
    r.add_argument("--ray", action="store_true", help="1 and 2 replicas vs the plain server; prefix vs random "
                                                      "routing on shared-prefix traffic (needs the ray extra)")
    r.add_argument("--ray-clients", type=int, default=8, help="concurrent streams of the overhead part (default 8)")
    r.add_argument("--documents", type=int, default=8, help="shared prefixes of the routing part (default 8)")
    r.add_argument("--in-flight", type=int, default=4, help="routing part: requests at once (default 4)")
    r.add_argument("--kv-budget", default="80M",
                   help="routing part: each replica's KV pool (default 80M: ~6 of the ~1,100-token documents)")


@attrs.frozen
class Side:
    """One server under test: how to start it and what its requests add to the common body."""

    name: str
    spec: ServerSpec
    extra_body: dict[str, Any] = attrs.field(factory=dict)


def _corert_side(name: str, path: str, threads: int, engine: str, plugins: list[str], args,
                 settings: tuple[str, ...] | list[str] = ()) -> Side:
    argv = [sys.executable, "-m", "corert.cli", "serve", "--host", HOST, "--port", "0", "--model", path,
            "--engine", engine, "--n-seqs", str(N_SEQS), "--threads", str(threads), *settings]
    for plugin in plugins:
        argv += ["--plugin", plugin]
    if args.ctx:
        argv += ["--ctx", str(args.ctx)]
    return Side(name, ServerSpec(name, tuple(argv), ready_path="/health", port_pattern=LISTENING,
                                 start_timeout_s=args.start_timeout), {"ignore_eos": True})


def build_sides(names: list[str], path: str, threads: int, args, flash_attn: bool = True) -> list[Side]:
    """The servers to start; ``flash_attn`` is the llama.cpp attention of corert-llama and llama-cpp-python
    (llama-server's default, -fa auto, is on), so every llama.cpp side computes attention alike."""
    plugins = [p for p in (args.plugin or []) if not p.startswith("kv_cache=")]
    kv = next((p for p in (args.plugin or []) if p.startswith("kv_cache=")), "kv_cache=paged:q8")
    sides: list[Side] = []
    for name in names:
        if name == "corert-native":
            sides.append(_corert_side(name, path, threads, "native", plugins + [kv], args))
        elif name == "corert-llama":
            sides.append(_corert_side(name, path, threads, "llama.cpp", plugins, args,
                                      ["--set", f"llama.flash_attn={str(flash_attn).lower()}"]))
        elif name == "llama-cpp-python":
            argv = [sys.executable, "-m", "corert.tools.bench.llama_cpp_python_server", "--model", path,
                    "--host", HOST, "--port", "{port}",
                    "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(args.ctx or 2048),
                    "--interrupt_requests", "False", "--flash_attn", str(flash_attn)]
            # its completion defaults add a 1.1 repeat penalty: off, like every other side's
            sides.append(Side(name, ServerSpec(name, tuple(argv), start_timeout_s=args.start_timeout),
                              {"min_tokens": args.max_tokens, "repeat_penalty": 1.0}))
        elif name == "llama-server":
            argv = [args.llama_server, "-m", path, "--host", HOST, "--port", "{port}", "-np", str(N_SEQS), "-cb",
                    "-t", str(threads), "-tb", str(threads)]
            sides.append(Side(name, ServerSpec(name, tuple(argv), ready_path="/health",
                                               start_timeout_s=args.start_timeout), {"ignore_eos": True}))
    return sides


def _parse(args) -> tuple[list[int], list[str], dict[str, int]]:
    try:
        counts = sorted({int(x) for x in str(args.clients).split(",") if x.strip()})
    except ValueError:
        raise InputError(f"--clients must be comma-separated integers, got {args.clients!r}") from None
    if not counts or counts[0] < 1 or counts[-1] > len(PROMPTS):
        raise InputError(f"--clients must be between 1 and {len(PROMPTS)}")
    if args.max_tokens < 1 or args.rounds < 1:
        raise InputError("--max-tokens and --rounds must be at least 1")
    default = [s for s in SIDES if s != "llama-server" or args.llama_server]
    names = [s.strip() for s in args.sides.split(",") if s.strip()] if args.sides else default
    unknown = [s for s in names if s not in SIDES]
    if unknown or not names:
        raise InputError(f"--sides: unknown side {unknown[0] if unknown else '(none)'!r}; choose from "
                         f"{', '.join(SIDES)}")
    if "llama-server" in names and not args.llama_server:
        raise InputError("the llama-server side needs --llama-server PATH (scripts/build-llama-server.sh builds one)")
    side_rounds: dict[str, int] = {}
    for item in args.side_rounds:
        name, _, value = item.partition("=")
        if name not in SIDES or not value.isdigit() or int(value) < 1:
            raise InputError(f"--side-rounds wants SIDE=N with N >= 1, got {item!r}")
        side_rounds[name] = int(value)
    return counts, list(dict.fromkeys(names)), side_rounds


def _body(model_id: str, prompt: str, max_tokens: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {"model": model_id, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
            "stream_options": {"include_usage": True}, **extra}


def _model_id(port: int) -> str:
    """The name the server lists its model under: what its requests must say."""
    import json

    status, body = get(port, "/v1/models")
    data = (json.loads(body).get("data") if status == 200 else None) or [{}]
    return data[0].get("id", "")


def _round_figures(rnd: Round, asked: int) -> dict[str, Any]:
    ok = [r for r in rnd.replies if r.status == 200 and not r.error]
    tokens = sum(r.tokens for r in rnd.replies)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    return {"tok_s": tokens / rnd.wall_s if rnd.wall_s > 0 else 0.0, "wall_s": rnd.wall_s,
            "tokens": tokens, "asked": asked, "failed": len(rnd.replies) - len(ok),
            "errors": sorted({r.error or f"HTTP {r.status}" for r in rnd.replies if r not in ok})[:3],
            "ttfts": ttfts, "ttft_p95": percentile(ttfts, 95), "gaps": [g for r in ok for g in r.gaps]}


def run(args) -> dict[str, Any]:
    if getattr(args, "ray", False):
        from corert.tools.bench.serve_ray import run_ray

        return run_ray(args)
    from corert.models.labels import model_label
    from corert.models.store import ModelStore
    from corert.runtime import RuntimeConfig
    from corert.tools.bench.layout_warmup import warm
    from corert.tools.bench.serve_plot import draw, require_matplotlib

    counts, names, side_rounds = _parse(args)
    if args.plot:
        require_matplotlib()  # before the runs, not after minutes of them
    cfg = RuntimeConfig.from_env(RuntimeConfig.from_toml(args.config) if getattr(args, "config", None) else None)
    path = str(ModelStore(progress=True).resolve(args.model or cfg.model))
    threads = args.threads or _cores()
    sides = build_sides(names, path, threads, args, cfg.llama.flash_attn)
    if "corert-native" in names:  # its layout converted before any server starts (layout_warmup.py)
        kv = next((p for p in (args.plugin or []) if p.startswith("kv_cache=")), "kv_cache=paged:q8")
        warm(path, "native", [p for p in (args.plugin or []) if not p.startswith("kv_cache=")] + [kv],
             getattr(args, "config", None), label=model_label(path))
    figures: dict[str, dict[int, list[dict[str, Any]]]] = {s.name: {n: [] for n in counts} for s in sides}
    with contextlib.ExitStack() as stack:
        procs = start_all([s.spec for s in sides], stack)
        ports = {s.name: procs[s.name].port for s in sides}
        model_ids = {s.name: _model_id(ports[s.name]) for s in sides}

        def bodies(side: Side, n: int, max_tokens: int) -> list[dict[str, Any]]:
            extra = {**side.extra_body, **({"min_tokens": max_tokens} if "min_tokens" in side.extra_body else {})}
            return [_body(model_ids[side.name], PROMPTS[i], max_tokens, extra) for i in range(n)]

        for side in sides:  # warm-up (kernels compiled, caches hot); not counted
            for n in (1, min(2, counts[-1])):
                concurrent_streams(ports[side.name], "/v1/completions", bodies(side, n, 8), timeout=args.timeout)
        for k in range(args.rounds):
            for n in counts:
                order = sides[k % len(sides):] + sides[:k % len(sides)]  # the first side rotates
                for side in order:
                    if k >= side_rounds.get(side.name, args.rounds):
                        continue
                    rnd = concurrent_streams(ports[side.name], "/v1/completions",
                                             bodies(side, n, args.max_tokens), timeout=args.timeout)
                    figures[side.name][n].append(_round_figures(rnd, n * args.max_tokens))
    rows = [_row(n, {s: figures[s][n] for s in figures}) for n in counts]
    result = {"bench": "serve", "model": model_label(path), "threads": threads, "max_tokens": args.max_tokens,
              "clients": counts, "rounds": args.rounds, "side_rounds": side_rounds, "n_seqs": N_SEQS,
              "llama_flash_attn": cfg.llama.flash_attn,
              "sides": {s.name: {"argv": _public_argv(s.spec.argv, path), "extra_body": s.extra_body}
                        for s in sides},
              "rows": rows, "goals": goals(rows), "plot": args.plot}
    failed = sum(row["sides"][s]["failed"] for row in rows for s in row["sides"])
    result["exit_code"] = 1 if failed else 0
    if args.plot:
        draw(result, args.plot)
    return result


def _cores() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _public_argv(argv: tuple[str, ...], path: str) -> list[str]:
    """The command line as recorded in results: no machine paths (the model file, the interpreter)."""
    out = []
    for a in argv:
        if a == path:
            out.append("MODEL")
        elif a == sys.executable:
            out.append("python")
        elif "/" in a and a.endswith("llama-server"):
            out.append("llama-server")
        else:
            out.append(a)
    return out


def _row(n: int, per_side: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One client count: each side's figures over its rounds, and the per-round ratios of each corert side
    to each competitor."""
    row: dict[str, Any] = {"clients": n, "sides": {}, "ratios": {}}
    for name, rs in per_side.items():
        ttfts = [t for r in rs for t in r["ttfts"]]
        gaps = [g for r in rs for g in r["gaps"]]
        row["sides"][name] = {
            "tok_s": median([r["tok_s"] for r in rs]), "tok_s_range": spread([r["tok_s"] for r in rs]),
            "ttft_p50_ms": percentile(ttfts, 50) * 1e3, "ttft_p95_ms": percentile(ttfts, 95) * 1e3,
            "itl_p95_ms": percentile(gaps, 95) * 1e3,
            "tokens_received": sum(r["tokens"] for r in rs), "tokens_asked": sum(r["asked"] for r in rs),
            "failed": sum(r["failed"] for r in rs), "errors": sorted({e for r in rs for e in r["errors"]})[:3],
            "rounds": len(rs), "tok_s_rounds": [r["tok_s"] for r in rs],
            "ttft_p95_ms_rounds": [r["ttft_p95"] * 1e3 for r in rs]}
    for ours in (s for s in CORERT_SIDES if s in per_side):
        for other in (s for s in per_side if s not in CORERT_SIDES):
            a, b = row["sides"][ours], row["sides"][other]
            tok = ratio_summary(ratios(a["tok_s_rounds"], b["tok_s_rounds"]))
            ttft = ratio_summary(ratios(a["ttft_p95_ms_rounds"], b["ttft_p95_ms_rounds"]))
            row["ratios"][f"{ours}/{other}"] = {"tok_s": tok, "ttft_p95": ttft}
    return row


def goals(rows: list[dict[str, Any]]) -> dict[str, bool | None]:
    """The issue's goals at 8 clients; None where a side or a client count was not measured."""
    by_n = {row["clients"]: row for row in rows}
    at8 = by_n.get(8)

    def ratio(ours: str, other: str) -> float | None:
        r = at8["ratios"].get(f"{ours}/{other}") if at8 else None
        return r["tok_s"]["median"] if r and r["tok_s"]["rounds"] else None

    def at_least(ours: str, other: str, x: float) -> bool | None:
        r = ratio(ours, other)
        return None if r is None else r >= x

    out: dict[str, bool | None] = {}
    native_2x = at_least("corert-native", "llama-server", 2.0)
    if native_2x is not None:
        s = at8["sides"]
        native_2x = native_2x and s["corert-native"]["ttft_p95_ms"] <= s["llama-server"]["ttft_p95_ms"]
    out["native_ge_2x_llama_server_ttft_no_worse"] = native_2x
    out["llama_engine_ge_0.9x_llama_server"] = at_least("corert-llama", "llama-server", 0.9)
    out["native_ge_6x_llama_cpp_python"] = at_least("corert-native", "llama-cpp-python", 6.0)
    out["llama_engine_ge_6x_llama_cpp_python"] = at_least("corert-llama", "llama-cpp-python", 6.0)
    for ours in CORERT_SIDES:
        one = by_n.get(1, {}).get("sides", {}).get(ours)
        eight = at8["sides"].get(ours) if at8 else None
        out[f"{ours}_ttft_p95_8_le_3x_1"] = (None if not (one and eight) else
                                             eight["ttft_p95_ms"] <= 3 * one["ttft_p95_ms"])
    return out


def render(r: dict[str, Any]) -> str:
    if r.get("bench") == "serve-ray":
        from corert.tools.bench.serve_ray import render as render_ray

        return render_ray(r)
    lines = [f"serving: {r['model']}, {r['max_tokens']} tokens per stream, greedy, {r['threads']} threads, "
             f"{r['rounds']} rounds, sides interleaved; machine: {r['machine']['cpu']} ({r['machine']['cores']} cores)",
             f"  {'clients':>7} {'side':<18} {'tok/s':>8} {'(min-max)':>15} {'TTFT p50':>9} {'p95':>8} "
             f"{'ITL p95':>8} {'tokens':>11}  (ms; tokens received/asked)"]
    for row in r["rows"]:
        for name, s in row["sides"].items():
            lo, hi = s["tok_s_range"]
            fail = f"  {s['failed']} failed: {'; '.join(s['errors'])}" if s["failed"] else ""
            lines.append(f"  {row['clients']:>7} {name:<18} {s['tok_s']:>8.1f} {f'({lo:.0f}-{hi:.0f})':>15} "
                         f"{s['ttft_p50_ms']:>9.0f} {s['ttft_p95_ms']:>8.0f} {s['itl_p95_ms']:>8.1f} "
                         f"{str(s['tokens_received']) + '/' + str(s['tokens_asked']):>11}{fail}")
        for pair, rr in row["ratios"].items():
            t, f = rr["tok_s"], rr["ttft_p95"]
            if t["rounds"]:
                lines.append(f"          {pair}: tok/s {t['median']:.2f}x ({t['range'][0]:.2f}-{t['range'][1]:.2f}), "
                             f"TTFT p95 {f['median']:.2f}x ({f['range'][0]:.2f}-{f['range'][1]:.2f})")
    lines.append("  goals (8 clients): " + ", ".join(
        f"{k} {'-' if v is None else 'met' if v else 'NOT met'}" for k, v in r["goals"].items()))
    lines.append("  (a shared machine: figures are noisy; the per-round ratios are what counts)")
    if r.get("plot"):
        lines.append(f"  plot: {r['plot']}")
    return "\n".join(lines)
