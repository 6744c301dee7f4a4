"""``corert bench serve --ray``: Ray Serve replicas against the single-process server, in one run.

Part 1, overhead: the same streaming load (N clients, distinct prompts) on
  plain    corert serve --engine native --plugin kv_cache=paged:q8 --n-seqs 8 --threads T
  ray-1    corert serve --ray --replicas 1 --num-cpus T   (the same options)
  ray-2    corert serve --ray --replicas 2 --num-cpus T/2
aggregate tok/s and TTFT p95 per side; the goal: ray-1 >= 0.9x plain (Ray's overhead <= 10%).
Part 2, routing: ray-2 with prefix-aware routing against ray-2 with random routing on shared-prefix traffic:
G documents of ~600 tokens, each asked about again and again (a new question each time), the KV pool of each
replica (--set kv.budget) holding fewer documents than G but more than G/2, so where requests go decides
whether their prefix is still cached.  One warm-up pass, then --rounds passes, C requests in flight.
Reported: the router's hit rate (its own metric) and TTFT p50/p95; the goal: prefix p95 <= random p95 / 2.

Each side is its own server process (a Ray side starts its own local Ray instance); they run one after
the other (two Ray instances at once would only fight for the cores), so load drift is not spread over the
sides as `corert bench serve` does: run it on a quiet machine, or twice.
"""
from __future__ import annotations

import random
import sys
from typing import Any

from corert.errors import InputError
from corert.tools.bench.server_procs import HOST, ServerProcess, ServerSpec, get
from corert.tools.bench.stream_client import concurrent_streams
from corert.tools.stats import percentile

LISTENING = r"corert serve: listening on http://127\.0\.0\.1:(\d+)"
N_SEQS = 8
TOPICS = ("lighthouse", "orchard", "observatory", "shipyard", "library", "bakery", "railway", "glacier",
          "vineyard", "monastery", "foundry", "harbour")


def document(topic: str, sentences: int = 18) -> str:
    """A ~600-token text about one topic, different from every other topic's from its first words on."""
    return f"Document about the {topic}.\n" + " ".join(
        f"Fact {i} about the {topic}: in year {1800 + 7 * i} its keepers counted {13 * i + 5} visitors, "
        f"noted the weather, and repaired part {i} of the {topic}." for i in range(sentences))


def _side_argv(path: str, args, ray: tuple[int, int] | None, route: str = "prefix",
               budget: str | None = None) -> tuple[str, ...]:
    argv = [sys.executable, "-m", "corert.cli", "serve", "--host", HOST, "--port", "0", "--model", path,
            "--engine", "native", "--plugin", "kv_cache=paged:q8", "--n-seqs", str(N_SEQS), "--ctx", "2048"]
    if ray is None:
        argv += ["--threads", str(args.threads_total)]
    else:
        argv += ["--ray", "--replicas", str(ray[0]), "--num-cpus", str(ray[1]), "--route", route]
    if budget:
        argv += ["--set", f"kv.budget={budget}"]
    return tuple(argv)


def _metric(port: int, name: str) -> float:
    status, body = get(port, "/metrics", timeout=30.0)
    if status != 200:
        return 0.0
    return sum(float(line.rpartition(" ")[2]) for line in body.decode().splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def _figures(rounds) -> dict[str, Any]:
    replies = [r for rnd in rounds for r in rnd.replies]
    ok = [r for r in replies if r.status == 200 and not r.error]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    tok_s = [sum(r.tokens for r in rnd.replies) / rnd.wall_s for rnd in rounds if rnd.wall_s > 0]
    return {"tok_s": sum(tok_s) / len(tok_s) if tok_s else 0.0, "tok_s_rounds": tok_s,
            "ttft_p50_ms": percentile(ttfts, 50) * 1e3, "ttft_p95_ms": percentile(ttfts, 95) * 1e3,
            "requests": len(replies), "failed": len(replies) - len(ok),
            "errors": sorted({r.error or f"HTTP {r.status}" for r in replies if r not in ok})[:3]}


def _overhead(name: str, argv: tuple[str, ...], args, model_id_of) -> dict[str, Any]:
    from corert.tools.bench.serve import PROMPTS

    spec = ServerSpec(name, argv, ready_path="/health", port_pattern=LISTENING, start_timeout_s=args.start_timeout)
    with ServerProcess(spec) as proc:
        model = model_id_of(proc.port)
        bodies = [{"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": args.max_tokens,
                   "temperature": 0.0, "stream_options": {"include_usage": True}} for i in range(args.ray_clients)]
        concurrent_streams(proc.port, "/v1/completions", [dict(b, max_tokens=8) for b in bodies[:2]],
                           timeout=args.timeout)  # warm-up
        rounds = [concurrent_streams(proc.port, "/v1/completions", bodies, timeout=args.timeout)
                  for _ in range(args.rounds)]
    return _figures(rounds)


def _shared_prefix(name: str, argv: tuple[str, ...], args, model_id_of) -> dict[str, Any]:
    spec = ServerSpec(name, argv, ready_path="/health", port_pattern=LISTENING, start_timeout_s=args.start_timeout)
    docs = [document(t) for t in TOPICS[:args.documents]]
    rng = random.Random(0)  # the same traffic for both policies
    with ServerProcess(spec) as proc:
        model = model_id_of(proc.port)

        def one_pass(k: int) -> list[dict[str, Any]]:
            order = list(range(len(docs)))
            rng.shuffle(order)
            return [{"model": model, "prompt": f"{docs[d]}\nQuestion {k}: what happened in year {1800 + 7 * k}?",
                     "max_tokens": 8, "temperature": 0.0, "stream_options": {"include_usage": True}} for d in order]

        def run_pass(k: int):
            bodies = one_pass(k)
            c = args.in_flight
            return [concurrent_streams(proc.port, "/v1/completions", bodies[i:i + c], timeout=args.timeout)
                    for i in range(0, len(bodies), c)]

        run_pass(0)  # warm-up: every document computed once somewhere
        hits0, miss0 = _metric(proc.port, "corert_route_prefix_hits_total"), \
            _metric(proc.port, "corert_route_prefix_misses_total")
        rounds = [rnd for k in range(1, args.rounds + 1) for rnd in run_pass(k)]
        hits = _metric(proc.port, "corert_route_prefix_hits_total") - hits0
        misses = _metric(proc.port, "corert_route_prefix_misses_total") - miss0
        kv_hits = _metric(proc.port, "corert_kv_prefix_hit_tokens_total")
        kv_asked = _metric(proc.port, "corert_kv_prefix_lookup_tokens_total")
    out = _figures(rounds)
    out.update(route_hit_rate=hits / (hits + misses) if hits + misses else 0.0,
               kv_prefix_hit_rate=kv_hits / kv_asked if kv_asked else 0.0)
    return out


def run_ray(args) -> dict[str, Any]:
    from corert.models.labels import model_label
    from corert.models.store import ModelStore
    from corert.runtime import RuntimeConfig
    from corert.tools.bench.serve import _cores, _model_id

    if args.rounds < 1 or args.ray_clients < 1 or args.documents < 2 or args.in_flight < 1:
        raise InputError("--rounds, --ray-clients and --in-flight must be at least 1, --documents at least 2")
    if args.documents > len(TOPICS):
        raise InputError(f"--documents: at most {len(TOPICS)}")
    cfg = RuntimeConfig.from_env(RuntimeConfig.from_toml(args.config) if getattr(args, "config", None) else None)
    path = str(ModelStore(progress=True).resolve(args.model or cfg.model))
    threads = args.threads or _cores()
    args.threads_total = threads
    half = max(1, threads // 2)
    overhead = {name: _overhead(name, argv, args, _model_id) for name, argv in (
        ("plain", _side_argv(path, args, None)),
        ("ray-1", _side_argv(path, args, (1, threads))),
        ("ray-2", _side_argv(path, args, (2, half))))}
    routing = {route: _shared_prefix(f"ray-2-{route}", _side_argv(path, args, (2, half), route, args.kv_budget),
                                     args, _model_id) for route in ("prefix", "random")}
    plain, one = overhead["plain"]["tok_s"], overhead["ray-1"]["tok_s"]
    p95 = {k: v["ttft_p95_ms"] for k, v in routing.items()}
    goals = {"ray1_overhead_le_10pct": (one / plain >= 0.9) if plain else None,
             "prefix_ttft_p95_le_half_random": (p95["prefix"] * 2 <= p95["random"]) if p95["random"] else None}
    failed = sum(v["failed"] for v in [*overhead.values(), *routing.values()])
    return {"bench": "serve-ray", "model": model_label(path), "threads": threads, "max_tokens": args.max_tokens,
            "clients": args.ray_clients, "rounds": args.rounds, "documents": args.documents,
            "kv_budget": args.kv_budget, "in_flight": args.in_flight, "overhead": overhead, "routing": routing,
            "ratios": {"ray-1/plain tok/s": one / plain if plain else None,
                       "ray-2/plain tok/s": overhead["ray-2"]["tok_s"] / plain if plain else None,
                       "random/prefix TTFT p95": p95["random"] / p95["prefix"] if p95["prefix"] else None},
            "goals": goals, "exit_code": 1 if failed else 0}


def render(r: dict[str, Any]) -> str:
    lines = [f"serve --ray: {r['model']}, {r['threads']} threads, {r['clients']} clients x {r['max_tokens']} "
             f"tokens, {r['rounds']} rounds; machine: {r['machine']['cpu']} ({r['machine']['cores']} cores)",
             f"  {'side':<14} {'tok/s':>8} {'TTFT p50':>9} {'p95':>8}  (ms)"]
    for name, s in r["overhead"].items():
        fail = f"  {s['failed']} failed: {'; '.join(s['errors'])}" if s["failed"] else ""
        lines.append(f"  {name:<14} {s['tok_s']:>8.1f} {s['ttft_p50_ms']:>9.0f} {s['ttft_p95_ms']:>8.0f}{fail}")
    lines.append(f"  shared-prefix traffic: {r['documents']} documents, {r['in_flight']} in flight, KV pool "
                 f"{r['kv_budget']} per replica")
    for name, s in r["routing"].items():
        fail = f"  {s['failed']} failed: {'; '.join(s['errors'])}" if s["failed"] else ""
        lines.append(f"  ray-2 {name:<8} hit rate {s['route_hit_rate']:.2f} (KV {s['kv_prefix_hit_rate']:.2f})  "
                     f"TTFT p50 {s['ttft_p50_ms']:.0f}  p95 {s['ttft_p95_ms']:.0f}{fail}")
    for k, v in r["ratios"].items():
        lines.append(f"  {k}: {'-' if v is None else f'{v:.2f}x'}")
    lines.append("  goals: " + ", ".join(f"{k} {'-' if v is None else 'met' if v else 'NOT met'}"
                                          for k, v in r["goals"].items()))
    lines.append("  (sides run one after another, not interleaved: a shared machine makes these noisy)")
    return "\n".join(lines)
