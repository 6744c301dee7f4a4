"""``corert bench soak``: many mixed requests against ``corert serve``, then the server's own leak counts.

The benchmark starts corert serve (a generation model and an embedding model, --n-seqs slots) on loopback
and first asks every distinct prompt alone: those greedy answers (and embeddings) are the references.
Then --requests requests of mixed kinds (streamed and whole completions and chats, clients that hang up
mid-stream, bad inputs, embeddings), in an order drawn from --seed, run with --concurrency clients at once.
Checks, each one failing the run (exit code 1):
  - no lost or wrong answer: every completion and chat, streamed or not, equals its solo reference; every
    embedding matches its reference; every bad input gets its own 4xx; nothing else fails;
  - no leak: once the last request is over, /metrics shows no active or queued sequence, no live KV
    sequence, the KV pages in use and the request threads back to where they were before the soak
    (read within a bounded wait), and the process's threads no more than before plus one per client
    (read after a warm-up burst at full concurrency, so the thread pools have grown to their working size);
  - still right afterwards: every reference asked again alone gives the same answer.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import math
import random
import sys
import time
from typing import Any, Callable

import attrs

from corert.errors import InputError
from corert.tools.bench.prometheus_text import samples
from corert.tools.bench.server_procs import HOST, ServerProcess, ServerSpec, get
from corert.tools.bench.stream_client import Reply, declare_body, post, stream

COMPLETION_PROMPTS = [
    "The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
    "The three primary colors are", "Water boils at a temperature of", "A haiku about the sea:",
]
CHAT_QUESTIONS = ["What is the capital of Italy?", "Name three fruits.", "Write one sentence about cats."]
EMBED_TEXTS = ["The food was delicious.", "A cat sleeps on the sofa.", "Rain is expected tomorrow."]

#: kind -> share of the requests (the plan draws kinds in these proportions)
MIX = {"completion": 0.16, "completion_stream": 0.18, "chat": 0.10, "chat_stream": 0.12, "disconnect": 0.12,
       "embedding": 0.12, "bad_input": 0.20}
#: bad input -> the status it must get
BAD_INPUTS = {"malformed_json": 400, "unknown_model": 404, "negative_max_tokens": 400, "temperature_out_of_range": 400,
              "prompt_longer_than_context": 400, "unsupported_parameter": 400, "body_too_large": 413,
              "unknown_field": 400}
LISTENING = r"corert serve: listening on http://127\.0\.0\.1:(\d+)"
#: gauges that must read 0 once the soak is over, and those that must be back at their value before it
ZERO_AFTER = ("corert_active_sequences", "corert_queue_depth", "corert_kv_sequences")
BASELINE_AFTER = ("corert_kv_pages_used", "corert_request_threads")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=1000, help="requests in all (default 1000)")
    p.add_argument("--concurrency", type=int, default=12,
                   help="clients at once (default 12: more than the slots, so requests queue)")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens per answer (default 16)")
    p.add_argument("--n-seqs", type=int, default=8, help="the server's sequence slots (default 8)")
    p.add_argument("--seed", type=int, default=0, help="the order of the mix (default 0)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take (default 300)")
    p.add_argument("--start-timeout", type=float, default=1200.0,
                   help="seconds the server may take to load (default 1200: a first run compiles kernels)")
    p.add_argument("--leak-wait", type=float, default=30.0,
                   help="seconds to wait for the metrics to settle after the last request (default 30)")


@attrs.frozen
class Job:
    index: int
    kind: str
    item: int  # which prompt / question / text, or which bad input


@attrs.frozen
class Outcome:
    index: int
    kind: str
    ok: bool
    detail: str = ""


def plan(n: int, seed: int) -> list[Job]:
    """``n`` jobs in MIX's proportions (rounded, the remainder to the first kind), shuffled by ``seed``."""
    counts = {kind: int(n * share) for kind, share in MIX.items()}
    counts["completion_stream"] += n - sum(counts.values())
    rng = random.Random(seed)
    sizes = {"completion": len(COMPLETION_PROMPTS), "completion_stream": len(COMPLETION_PROMPTS),
             "chat": len(CHAT_QUESTIONS), "chat_stream": len(CHAT_QUESTIONS), "disconnect": len(COMPLETION_PROMPTS),
             "embedding": len(EMBED_TEXTS), "bad_input": len(BAD_INPUTS)}
    kinds = [kind for kind, c in counts.items() for _ in range(c)]
    rng.shuffle(kinds)
    # items cycle so that every prompt and every bad input is exercised, whatever n
    seen: collections.Counter[str] = collections.Counter()
    jobs = []
    for i, kind in enumerate(kinds):
        jobs.append(Job(i, kind, seen[kind] % sizes[kind]))
        seen[kind] += 1
    return jobs


@attrs.define
class Client:
    """What every request needs: the server's port, the model names, the greedy settings."""

    port: int
    model: str
    embed_model: str
    max_tokens: int
    timeout: float
    n_ctx: int

    def completion_body(self, item: int) -> dict[str, Any]:
        return {"model": self.model, "prompt": COMPLETION_PROMPTS[item], "max_tokens": self.max_tokens,
                "temperature": 0.0}

    def chat_body(self, item: int) -> dict[str, Any]:
        return {"model": self.model, "messages": [{"role": "user", "content": CHAT_QUESTIONS[item]}],
                "max_tokens": self.max_tokens, "temperature": 0.0}

    def embed(self, item: int) -> Reply:
        return post(self.port, "/v1/embeddings", {"model": self.embed_model, "input": EMBED_TEXTS[item]},
                    timeout=self.timeout)

    def bad(self, name: str) -> Reply:
        base = self.completion_body(0)
        bodies: dict[str, Callable[[], Reply]] = {
            "malformed_json": lambda: post(self.port, "/v1/completions", None, raw=b'{"model": "x", "prompt": ',
                                           timeout=self.timeout),
            "unknown_model": lambda: post(self.port, "/v1/completions", {**base, "model": "no-such-model"},
                                          timeout=self.timeout),
            "negative_max_tokens": lambda: post(self.port, "/v1/completions", {**base, "max_tokens": -5},
                                                timeout=self.timeout),
            "temperature_out_of_range": lambda: post(self.port, "/v1/chat/completions",
                                                     {**self.chat_body(0), "temperature": 7.5}, timeout=self.timeout),
            # a prompt of about 2 tokens a word: far past the context
            "prompt_longer_than_context": lambda: post(self.port, "/v1/completions",
                                                       {**base, "prompt": "lorem ipsum " * self.n_ctx},
                                                       timeout=self.timeout),
            "unsupported_parameter": lambda: post(self.port, "/v1/completions", {**base, "echo": True},
                                                  timeout=self.timeout),
            "body_too_large": lambda: declare_body(self.port, "/v1/completions", 1 << 30),
            "unknown_field": lambda: post(self.port, "/v1/completions", {**base, "no_such_field": 1},
                                          timeout=self.timeout),
        }
        return bodies[name]()


def references(c: Client) -> dict[str, Any]:
    """Every distinct request asked alone, one after another: the answers the soak must reproduce."""
    refs: dict[str, Any] = {"completion": [], "chat": [], "embedding": []}
    for i in range(len(COMPLETION_PROMPTS)):
        r = post(c.port, "/v1/completions", c.completion_body(i), timeout=c.timeout)
        _require(r, f"the solo completion of prompt {i}")
        refs["completion"].append(r.text)
    for i in range(len(CHAT_QUESTIONS)):
        r = post(c.port, "/v1/chat/completions", c.chat_body(i), timeout=c.timeout)
        _require(r, f"the solo chat of question {i}")
        refs["chat"].append(r.text)
    for i in range(len(EMBED_TEXTS)):
        r = c.embed(i)
        _require(r, f"the solo embedding of text {i}")
        refs["embedding"].append(r.body["data"][0]["embedding"])
    return refs


def _require(r: Reply, what: str) -> None:
    if r.status != 200:
        from corert.errors import CorertError

        raise CorertError(f"soak: {what} failed before the soak began: HTTP {r.status} {r.error or r.body}")


def _close(a: list[float], b: list[float], tol: float = 1e-4) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, abs_tol=tol) for x, y in zip(a, b))


def run_job(c: Client, job: Job, refs: dict[str, Any]) -> Outcome:
    def same(r: Reply, want: str) -> Outcome:
        if r.status != 200 or r.error:
            return Outcome(job.index, job.kind, False, f"HTTP {r.status} {r.error or _error_message(r)}")
        if r.text != want:
            return Outcome(job.index, job.kind, False, f"answer {r.text!r} != solo {want!r}")
        return Outcome(job.index, job.kind, True)

    kind, item = job.kind, job.item
    if kind == "completion":
        return same(post(c.port, "/v1/completions", c.completion_body(item), timeout=c.timeout),
                    refs["completion"][item])
    if kind == "completion_stream":
        return same(stream(c.port, "/v1/completions", c.completion_body(item), timeout=c.timeout),
                    refs["completion"][item])
    if kind == "chat":
        return same(post(c.port, "/v1/chat/completions", c.chat_body(item), timeout=c.timeout), refs["chat"][item])
    if kind == "chat_stream":
        return same(stream(c.port, "/v1/chat/completions", c.chat_body(item), timeout=c.timeout), refs["chat"][item])
    if kind == "disconnect":
        r = stream(c.port, "/v1/completions", c.completion_body(item), timeout=c.timeout,
                   hang_up_after=1 + job.index % 3)
        ok = r.status == 200 and not r.error and refs["completion"][item].startswith(r.text)
        return Outcome(job.index, kind, ok, "" if ok else f"HTTP {r.status} {r.error} {r.text!r}")
    if kind == "embedding":
        r = c.embed(item)
        if r.status != 200:
            return Outcome(job.index, kind, False, f"HTTP {r.status} {_error_message(r)}")
        ok = _close(r.body["data"][0]["embedding"], refs["embedding"][item])
        return Outcome(job.index, kind, ok, "" if ok else "embedding differs from the solo one")
    name = list(BAD_INPUTS)[item]
    r = c.bad(name)
    want = BAD_INPUTS[name]
    shaped = isinstance(r.body, dict) and isinstance(r.body.get("error"), dict)  # OpenAI's error shape
    ok = r.status == want and shaped
    return Outcome(job.index, f"bad_input:{name}", ok,
                   "" if ok else f"HTTP {r.status} (want {want}, OpenAI error shape: {shaped}) {r.error}")


def _error_message(r: Reply) -> str:
    if isinstance(r.body, dict) and isinstance(r.body.get("error"), dict):
        return str(r.body["error"].get("message", ""))[:200]
    return r.error


def metrics(port: int) -> dict[str, float]:
    status, body = get(port, "/metrics", timeout=10.0)
    if status != 200:
        from corert.errors import CorertError

        raise CorertError(f"soak: GET /metrics answered HTTP {status}")
    return samples(body.decode("utf-8", errors="replace"))


def settle(port: int, before: dict[str, float], wait_s: float,
           slack: int = 0) -> tuple[dict[str, float], dict[str, bool]]:
    """Polls /metrics until every leak check holds or ``wait_s`` passes: (the last reading, the checks)."""
    deadline = time.monotonic() + wait_s
    while True:
        now = metrics(port)
        checks = {f"{k} == 0": now.get(k, math.nan) == 0 for k in ZERO_AFTER}
        checks.update({f"{k} back to {before.get(k, math.nan):g}": now.get(k, math.nan) == before.get(k, math.nan)
                       for k in BASELINE_AFTER})
        # a thread pool may still add a worker per concurrent client (how many ran at once varies from
        # run to run); a leak grows with the number of requests
        limit = before.get("corert_process_threads", math.nan) + slack
        checks[f"corert_process_threads <= {limit:g}"] = now.get("corert_process_threads", math.inf) <= limit
        if all(checks.values()) or time.monotonic() > deadline:
            return now, checks
        time.sleep(0.5)


def _engine_plugins(args) -> tuple[str, list[str]]:
    engine = args.engine or "native"
    plugins = list(args.plugin or [])
    if engine == "native" and not any(p.startswith("kv_cache=") for p in plugins):
        plugins.append("kv_cache=paged:q8")
    return engine, plugins


def server_spec(args, path: str) -> ServerSpec:
    """corert serve with the generation model (its embedding model is the Runtime's configured one)."""
    argv = [sys.executable, "-m", "corert.cli", "serve", "--host", HOST, "--port", "0", "--model", path,
            "--n-seqs", str(args.n_seqs)]
    engine, plugins = _engine_plugins(args)
    argv += ["--engine", engine]
    for p in plugins:
        argv += ["--plugin", p]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.ctx:
        argv += ["--ctx", str(args.ctx)]
    if getattr(args, "config", None):
        argv += ["--config", args.config]
    return ServerSpec("corert serve", tuple(argv), ready_path="/health", port_pattern=LISTENING,
                      start_timeout_s=args.start_timeout)


def run(args) -> dict[str, Any]:
    from corert.models.labels import model_label
    from corert.models.store import ModelStore
    from corert.runtime import RuntimeConfig
    from corert.tools.bench.layout_warmup import warm

    if args.requests < 1 or args.concurrency < 1 or args.max_tokens < 1:
        raise InputError("--requests, --concurrency and --max-tokens must be at least 1")
    cfg = RuntimeConfig.from_env(RuntimeConfig.from_toml(args.config) if getattr(args, "config", None) else None)
    store = ModelStore(progress=True)
    path = str(store.resolve(args.model or cfg.model))
    store.resolve(cfg.embed_model)  # pulled here, with progress, rather than inside the server's load
    spec = server_spec(args, path)
    # the native layout converted before the server starts (layout_warmup.py)
    warm(path, *_engine_plugins(args), getattr(args, "config", None), label=model_label(path))
    jobs = plan(args.requests, args.seed)
    with ServerProcess(spec) as server:
        models = [m["id"] for m in json.loads(get(server.port, "/v1/models")[1])["data"]]
        c = Client(server.port, _model_id(models, path), _model_id(models, cfg.embed_model), args.max_tokens,
                   args.timeout, args.ctx or cfg.n_ctx)
        refs = references(c)
        # a burst of every kind at full concurrency first: the server's thread pools grow to what this
        # concurrency needs, so what the soak adds on top of that is a leak, not a pool warming up
        with concurrent.futures.ThreadPoolExecutor(args.concurrency, thread_name_prefix="soak-warm") as pool:
            list(pool.map(lambda j: run_job(c, j, refs), plan(4 * args.concurrency, args.seed + 1)))
        before = settle(server.port, metrics(server.port), args.leak_wait)[0]
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.concurrency, thread_name_prefix="soak") as pool:
            outcomes = list(pool.map(lambda j: run_job(c, j, refs), jobs))
        seconds = time.perf_counter() - t0
        after, leak_checks = settle(server.port, before, args.leak_wait, slack=args.concurrency)
        again = references(c)
        requests = metrics(server.port)
    wrong = [o for o in outcomes if not o.ok]
    by_kind: dict[str, list[int]] = {}
    for o in outcomes:
        k = by_kind.setdefault(o.kind.split(":")[0], [0, 0])
        k[0] += o.ok
        k[1] += 1
    checks = {"no lost or wrong answers": not wrong, **leak_checks,
              "solo answers unchanged after the soak": again == refs}
    gauges = sorted({*ZERO_AFTER, *BASELINE_AFTER, "corert_process_threads"})
    return {"bench": "soak", "model": model_label(path), "embed_model": cfg.embed_model,
            "engine": args.engine or "native", "plugins": list(spec.argv[spec.argv.index("--engine"):]),
            "requests": len(outcomes), "concurrency": args.concurrency, "n_seqs": args.n_seqs,
            "max_tokens": args.max_tokens, "seed": args.seed, "seconds": seconds,
            "by_kind": {k: f"{ok}/{n}" for k, (ok, n) in sorted(by_kind.items())},
            "failures": [attrs.asdict(o) for o in wrong[:20]], "failed": len(wrong),
            "metrics_before": {k: before.get(k) for k in gauges}, "metrics_after": {k: after.get(k) for k in gauges},
            "requests_counted": requests.get("corert_requests_total"),
            "checks": checks, "exit_code": 0 if all(checks.values()) else 1}


def _model_id(ids: list[str], wanted: str) -> str:
    """The id /v1/models lists for the model given as ``wanted`` (a registry name or a file path)."""
    import os

    base = os.path.basename(wanted)
    for candidate in (wanted, base, os.path.splitext(base)[0]):
        if candidate in ids:
            return candidate
    from corert.models.labels import model_label

    label = model_label(wanted)
    if label in ids:
        return label
    from corert.errors import CorertError

    raise CorertError(f"soak: the server lists models {ids}, none of them {wanted!r}")


def render(r: dict[str, Any]) -> str:
    lines = [f"soak: {r['requests']} mixed requests, {r['concurrency']} at once, against corert serve "
             f"({r['model']} + {r['embed_model']}, {' '.join(r['plugins'])}, {r['n_seqs']} slots), "
             f"{r['max_tokens']} tokens per answer, in {r['seconds']:.0f} s; machine: {r['machine']['cpu']}",
             "  answered right, by kind: " + ", ".join(f"{k} {v}" for k, v in r["by_kind"].items())]
    for f in r["failures"][:10]:
        lines.append(f"  FAILED #{f['index']} {f['kind']}: {f['detail']}")
    lines.append("  metrics before -> after: " + ", ".join(
        f"{k.removeprefix('corert_')} {r['metrics_before'][k]:g} -> {r['metrics_after'][k]:g}"
        for k in r["metrics_before"] if r["metrics_before"][k] is not None and r["metrics_after"][k] is not None))
    for name, ok in r["checks"].items():
        lines.append(f"  {'ok  ' if ok else 'FAIL'} {name}")
    return "\n".join(lines)
