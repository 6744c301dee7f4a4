"""``corert bench serve --ray``: Ray Serve replicas against the single-process server, in one bounded run.

The plain side is ``corert serve --isolation none`` (a child process; the replicas run without worker
processes too).  The Ray sides are the app ``corert serve --ray`` deploys (``build_app``), on one local Ray
instance this benchmark starts and stops: starting Ray once, not once per side, keeps the run to a few
minutes on 2 cores.  Every side: native engine, paged:q8 KV, 8 slots, the same model file.

Part 1, overhead: C clients stream one completion each (distinct prompts, ``ignore_eos``, --max-tokens),
  ray-1  1 replica of num_cpus T     against plain with T threads, rounds interleaved (paired ratios)
  ray-2  2 replicas of num_cpus T/2  likewise
aggregate tok/s and TTFT p95 per side; the goal: ray-1 >= 0.9x plain tok/s (Ray's overhead <= 10%).  Also
the CPU milliseconds per token each process spent in those rounds (plain server, replica, ingress, Serve's
proxy, Ray's daemons; proc_cpu): a figure other load on the machine blurs much less than tok/s.
Part 2, routing: 2 replicas with prefix-aware routing, then with random routing, on shared-prefix traffic:
G documents of ~1,000 tokens, each asked about again and again (a new question each time), each replica's
KV pool (--kv-budget) holding more than G/2 documents but fewer than G, so where a request goes decides
whether its document is still cached.  A warm-up pass (every document computed once, caches warm), then
--rounds passes (documents shuffled, the same order for both policies), --in-flight requests at once.
Reported: the router's hit rate (its own metric, measured passes only), the replicas' KV prefix hit rate
and TTFT p50/p95; the goal: prefix p95 <= random p95 / 2.
"""
from __future__ import annotations

import contextlib
import os
import random
import sys
import threading
import time
from typing import Any, Callable

from corert.errors import InputError
from corert.tools.bench.proc_cpu import CpuMeter, per_token_ms
from corert.tools.bench.server_procs import HOST, ServerProcess, ServerSpec, free_port, get
from corert.tools.bench.stream_client import Round, concurrent_streams, post
from corert.tools.stats import median, percentile, ratio_summary, ratios

LISTENING = r"corert serve: listening on http://127\.0\.0\.1:(\d+)"
N_SEQS = 8
CTX = 2048
KV = "kv_cache=paged:q8"
#: the processes whose CPU the overhead part reports: (role, text in the command line)
ROLES = (("plain server", "corert.cli serve"), ("replica", "corert_replica"), ("ingress", "corert_ingress"),
         ("proxy", "ProxyActor"), ("controller", "ServeController"), ("raylet", "raylet/raylet"),
         ("gcs", "gcs_server"))
TOPICS = ("lighthouse", "orchard", "observatory", "shipyard", "library", "bakery", "railway", "glacier",
          "vineyard", "monastery", "foundry", "harbour")


def document(topic: str, sentences: int = 30) -> str:
    """A ~1,000-token text about one topic, different from every other topic's from its first words on."""
    return f"Document about the {topic}.\n" + " ".join(
        f"Fact {i} about the {topic}: in year {1800 + 7 * i} its keepers counted {13 * i + 5} visitors, "
        f"noted the weather, and repaired part {i} of the {topic}." for i in range(sentences))


def _figures(rounds: list[Round]) -> dict[str, Any]:
    replies = [r for rnd in rounds for r in rnd.replies]
    ok = [r for r in replies if r.status == 200 and not r.error]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    tok_s = [sum(r.tokens for r in rnd.replies) / rnd.wall_s if rnd.wall_s > 0 else 0.0 for rnd in rounds]
    return {"tok_s": median(tok_s) if tok_s else 0.0, "tok_s_rounds": tok_s,
            "ttft_p50_ms": percentile(ttfts, 50) * 1e3, "ttft_p95_ms": percentile(ttfts, 95) * 1e3,
            "requests": len(replies), "failed": len(replies) - len(ok),
            "errors": sorted({r.error or f"HTTP {r.status}" for r in replies if r not in ok})[:3]}


def _metric(port: int, name: str) -> float:
    """The sum of a metric's samples over every label (replicas, models) in GET /metrics."""
    status, body = get(port, "/metrics", timeout=30.0)
    if status != 200:
        return 0.0
    return sum(float(line.rpartition(" ")[2]) for line in body.decode().splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


class RayCluster:
    """One local Ray instance, the app's endpoint on a loopback port; apps deployed and deleted in turn."""

    def __init__(self, cpus: int, start_timeout: float):
        import ray
        from ray import serve

        from corert.server.ray_local import start_local

        self.ray, self.serve, self.start_timeout = ray, serve, start_timeout
        self.port = free_port()
        start_local(HOST, self.port, num_cpus=cpus, namespace="corert-bench")  # as `corert serve --ray` does

    def deploy(self, config: Any, settings: Any, ray_settings: Any) -> None:
        """Deploys the app and waits (bounded) until its replicas have loaded and warmed up."""
        from corert.server.ray_deploy import build_app

        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.serve.run(build_app(config, settings, ray_settings), name="corert", route_prefix="/")
            except BaseException as exc:  # noqa: BLE001 - reported by the caller
                failure.append(exc)

        t = threading.Thread(target=run, name="bench-serve-run", daemon=True)
        t.start()
        t.join(self.start_timeout)
        if t.is_alive():
            raise TimeoutError(f"the Ray Serve app was not running after {self.start_timeout:.0f} s")
        if failure:
            raise failure[0]

    def delete(self) -> None:
        self.serve.delete("corert")

    def close(self) -> None:
        try:
            self.serve.shutdown()
        finally:
            self.ray.shutdown()


def _overhead_bodies(model: str, args) -> list[dict[str, Any]]:
    from corert.tools.bench.serve import PROMPTS

    return [{"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": args.max_tokens,
             "temperature": 0.0, "ignore_eos": True, "stream_options": {"include_usage": True}}
            for i in range(args.ray_clients)]


class Measured:
    """One side's rounds and the CPU seconds every process spent in each (by role)."""

    def __init__(self):
        self.rounds: list[Round] = []
        self.cpu: list[dict[str, float]] = []

    def run(self, meter: CpuMeter, port: int, bodies: list[dict[str, Any]], timeout: float) -> None:
        meter.start()
        self.rounds.append(concurrent_streams(port, "/v1/completions", bodies, timeout=timeout))
        self.cpu.append(meter.stop())

    def cpu_ms_per_token(self) -> dict[str, float] | None:
        return per_token_ms(self.cpu, [sum(r.tokens for r in rnd.replies) for rnd in self.rounds])


def _paired(plain_port: int, ray_port: int, bodies: list[dict[str, Any]], args) -> tuple[Measured, Measured]:
    """Rounds alternating between the two sides (the first side alternating too), after a warm-up each."""
    warm = [dict(b, max_tokens=4) for b in bodies[:2]]
    for port in (plain_port, ray_port):
        concurrent_streams(port, "/v1/completions", warm, timeout=args.timeout)
    meter = CpuMeter(os.getpid(), ROLES, root_role="bench clients")
    plain, ray = Measured(), Measured()
    for k in range(args.rounds):
        order = [(plain_port, plain), (ray_port, ray)]
        for port, side in (order if k % 2 == 0 else order[::-1]):
            side.run(meter, port, bodies, args.timeout)
    return plain, ray


def _shared_prefix(port: int, model: str, args) -> dict[str, Any]:
    docs = [document(t) for t in TOPICS[:args.documents]]
    rng = random.Random(0)  # the same traffic for both policies

    def run_pass(k: int) -> list[Round]:
        order = list(range(len(docs)))
        rng.shuffle(order)
        bodies = [{"model": model, "prompt": f"{docs[d]}\nQuestion {k}: what happened in year {1800 + 7 * k}?",
                   "max_tokens": 8, "temperature": 0.0, "stream_options": {"include_usage": True}} for d in order]
        c = args.in_flight
        return [concurrent_streams(port, "/v1/completions", bodies[i:i + c], timeout=args.timeout)
                for i in range(0, len(bodies), c)]

    # one document alone on an idle replica: its TTFT is a cold prefill (the capacity model's P)
    cold = concurrent_streams(port, "/v1/completions", [{"model": model, "prompt": docs[0], "max_tokens": 1,
                                                         "temperature": 0.0}], timeout=args.timeout).replies[0]
    counted = post(port, "/v1/tokenize", {"model": model, "text": docs[0]}, timeout=args.timeout).body or {}
    run_pass(0)  # warm-up: every document computed once somewhere
    names = ("corert_route_prefix_hits_total", "corert_route_prefix_misses_total",
             "corert_kv_prefix_hit_tokens_total", "corert_kv_prefix_lookup_tokens_total")
    before = {n: _metric(port, n) for n in names}
    rounds = [rnd for k in range(1, args.rounds + 1) for rnd in run_pass(k)]
    d = {n: _metric(port, n) - before[n] for n in names}
    out = _figures(rounds)
    routed = d["corert_route_prefix_hits_total"] + d["corert_route_prefix_misses_total"]
    asked = d["corert_kv_prefix_lookup_tokens_total"]
    out.update(route_hit_rate=d["corert_route_prefix_hits_total"] / routed if routed else 0.0,
               kv_prefix_hit_rate=d["corert_kv_prefix_hit_tokens_total"] / asked if asked else 0.0,
               kv_pool_tokens=_metric(port, "corert_kv_pages_total") * 16 / 2,  # per replica (2 of them)
               document_tokens=counted.get("count"), cold_ttft_ms=cold.ttft * 1e3 if cold.ttft else None,
               prefill_tok_s=counted["count"] / cold.ttft if cold.ttft and counted.get("count") else None)
    return out


def _settled_spin(wait_s: float = 30.0) -> dict[str, str]:
    """The OpenMP spin both sides get (each choosing at its own start would see the other's start-up), chosen
    from a sample of the machine now (corert.spin); while that reads busy (whatever ran before may still be
    ending), sampled again each second for at most ``wait_s``; none if the user set it."""
    from corert.spin import SPIN_FREE, given_spin

    deadline = time.monotonic() + wait_s
    spin = given_spin(os.environ)
    while spin and spin["GOMP_SPINCOUNT"] != str(SPIN_FREE) and time.monotonic() < deadline:
        time.sleep(1.0)
        spin = given_spin(os.environ)
    return spin


def _timed(what: str, fn: Callable[[], Any], log: dict[str, float]) -> Any:
    t0 = time.monotonic()
    try:
        return fn()
    finally:
        log[what] = round(time.monotonic() - t0, 1)
        print(f"corert bench serve --ray: {what} {log[what]:.0f} s", file=sys.stderr, flush=True)


def run_ray(args) -> dict[str, Any]:
    # the options are checked before ray is imported (seconds): a usage error comes back at once
    if args.rounds < 1 or args.ray_clients < 1 or args.documents < 2 or args.in_flight < 1:
        raise InputError("--rounds, --ray-clients and --in-flight must be at least 1, --documents at least 2")
    if args.documents > len(TOPICS):
        raise InputError(f"--documents: at most {len(TOPICS)}")
    from corert.config import RuntimeConfig
    from corert.models.labels import model_label
    from corert.models.store import ModelStore
    from corert.server.app import ServeSettings
    from corert.server.ray_deploy import RaySettings
    from corert.tools.bench.layout_warmup import warm
    from corert.tools.bench.serve import _cores, _model_id

    cfg = RuntimeConfig.from_env(RuntimeConfig.from_toml(args.config) if getattr(args, "config", None) else None)
    path = str(ModelStore(progress=True).resolve(args.model or cfg.model))
    threads = args.threads or _cores()
    half = max(1, threads // 2)
    config = cfg.evolve(model=path, engine="native", plugins=[KV], n_seqs=N_SEQS, n_ctx=CTX, isolation="none")
    settings = ServeSettings(models=(path,))
    max_ongoing = 2 * N_SEQS + settings.max_queue
    plain_argv = (sys.executable, "-m", "corert.cli", "serve", "--host", HOST, "--port", "0", "--model", path,
                  "--engine", "native", "--plugin", KV, "--n-seqs", str(N_SEQS), "--ctx", str(CTX),
                  "--threads", str(threads), "--isolation", "none")
    warm(path, "native", [KV], getattr(args, "config", None), label=model_label(path))  # layout_warmup.py
    load_before = os.getloadavg()
    times: dict[str, float] = {}
    t0 = time.monotonic()
    spin = _settled_spin()
    spec = ServerSpec("plain", plain_argv, ready_path="/health", port_pattern=LISTENING, env=spin,
                      start_timeout_s=args.start_timeout)
    # Ray's driver prints its daemons' errors on stdout, which carries this command's JSON: stderr instead
    with ServerProcess(spec) as plain, contextlib.redirect_stdout(sys.stderr):
        model = _model_id(plain.port)
        bodies = _overhead_bodies(model, args)
        cluster = _timed("ray start", lambda: RayCluster(threads, args.start_timeout), times)
        try:
            rounds: dict[str, dict[str, list[Round]]] = {}
            cpu: dict[str, dict[str, Any]] = {}
            for name, replicas, cpus in (("ray-1", 1, threads), ("ray-2", 2, half)):
                _timed(f"{name} deploy", lambda: cluster.deploy(config, settings, RaySettings(
                    replicas=replicas, num_cpus=cpus, max_ongoing=max_ongoing, env=spin)), times)
                p, r = _timed(f"{name} rounds", lambda: _paired(plain.port, cluster.port, bodies, args), times)
                rounds[name] = {"plain": p.rounds, "ray": r.rounds}
                cpu[name] = {"plain": p.cpu_ms_per_token(), "ray": r.cpu_ms_per_token()}
                cluster.delete()
            budget_config = config.set_option(f"kv.budget={args.kv_budget}")
            routing = {}
            for policy in ("prefix", "random"):
                _timed(f"routing {policy} deploy", lambda: cluster.deploy(
                    budget_config, settings,
                    RaySettings(replicas=2, num_cpus=half, max_ongoing=max_ongoing, policy=policy, env=spin)), times)
                routing[policy] = _timed(f"routing {policy} passes",
                                         lambda: _shared_prefix(cluster.port, model, args), times)
                cluster.delete()
        finally:
            cluster.close()
    overhead: dict[str, Any] = {"plain": _figures([x for v in rounds.values() for x in v["plain"]])}
    ratio: dict[str, Any] = {}
    for name, v in rounds.items():
        overhead[name] = _figures(v["ray"])
        ratio[f"{name}/plain tok/s"] = ratio_summary(ratios(overhead[name]["tok_s_rounds"],
                                                            _figures(v["plain"])["tok_s_rounds"]))
    p95 = {k: v["ttft_p95_ms"] for k, v in routing.items()}
    ratio["random/prefix TTFT p95"] = p95["random"] / p95["prefix"] if p95["prefix"] else None
    one = ratio["ray-1/plain tok/s"]["median"]
    goals = {"ray1_overhead_le_10pct": one >= 0.9,
             "prefix_ttft_p95_le_half_random": p95["prefix"] * 2 <= p95["random"]}
    failed = sum(v["failed"] for v in [*overhead.values(), *routing.values()])
    return {"bench": "serve-ray", "model": model_label(path), "threads": threads, "max_tokens": args.max_tokens,
            "clients": args.ray_clients, "rounds": args.rounds, "documents": args.documents,
            "document_chars": len(document(TOPICS[0])), "kv_budget": args.kv_budget, "in_flight": args.in_flight,
            "overhead": overhead, "cpu_ms_per_token": cpu, "routing": routing, "ratios": ratio, "goals": goals,
            "replica_env": spin, "load_avg_before": load_before, "load_avg_after": os.getloadavg(), "seconds": times,
            "wall_s": round(time.monotonic() - t0, 1), "exit_code": 1 if failed else 0}


def render(r: dict[str, Any]) -> str:
    lines = [f"serve --ray: {r['model']}, {r['threads']} threads, {r['clients']} clients x {r['max_tokens']} "
             f"tokens, {r['rounds']} rounds; machine: {r['machine']['cpu']} ({r['machine']['cores']} cores), "
             f"load {r['load_avg_before'][0]:.1f} before, {r['load_avg_after'][0]:.1f} after; {r['wall_s']:.0f} s",
             f"  {'side':<14} {'tok/s':>8} {'TTFT p50':>9} {'p95':>8}  (ms)"]
    for name, s in r["overhead"].items():
        fail = f"  {s['failed']} failed: {'; '.join(s['errors'])}" if s["failed"] else ""
        lines.append(f"  {name:<14} {s['tok_s']:>8.1f} {s['ttft_p50_ms']:>9.0f} {s['ttft_p95_ms']:>8.0f}{fail}")
    for name, sides in r.get("cpu_ms_per_token", {}).items():
        if sides["plain"] and sides["ray"]:
            lines.append(f"  CPU ms/token, {name} rounds: " + ", ".join(
                f"{role} {ms:.2f}" for role, ms in sorted(sides["ray"].items(), key=lambda x: -x[1]) if ms >= 0.01)
                + f"; plain rounds: plain server {sides['plain'].get('plain server', 0.0):.2f}")
    prefix = r["routing"]["prefix"]
    lines.append(f"  shared-prefix traffic: {r['documents']} documents of {prefix['document_tokens']} tokens, "
                 f"{r['in_flight']} in flight, KV pool {r['kv_budget']} ({prefix['kv_pool_tokens']:.0f} tokens) "
                 f"per replica; a cold prefill: {prefix['prefill_tok_s'] or 0:.0f} tok/s per replica")
    for name, s in r["routing"].items():
        fail = f"  {s['failed']} failed: {'; '.join(s['errors'])}" if s["failed"] else ""
        lines.append(f"  ray-2 {name:<8} hit rate {s['route_hit_rate']:.2f} (KV {s['kv_prefix_hit_rate']:.2f})  "
                     f"TTFT p50 {s['ttft_p50_ms']:.0f}  p95 {s['ttft_p95_ms']:.0f}{fail}")
    for k, v in r["ratios"].items():
        if isinstance(v, dict):
            lo, hi = v["range"]
            lines.append(f"  {k}: {v['median']:.2f}x ({lo:.2f}-{hi:.2f} over {len(v['rounds'])} rounds)")
        else:
            lines.append(f"  {k}: {'-' if v is None else f'{v:.2f}x'}")
    lines.append("  goals: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in r["goals"].items()))
    return "\n".join(lines)
