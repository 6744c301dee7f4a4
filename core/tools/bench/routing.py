"""``corert bench routing``: the prefix-aware router at 10 / 100 / 1000 replicas, simulated (no Ray).

The routing decision is the real one (:class:`~corert.server.prefix_route.PrefixChooser`, which the Ray
router calls); replicas, traffic and Serve's behaviour around the router are simulated
(:mod:`.routing_sim`, :mod:`.routing_replica`), so the run takes seconds to a minute in simulated time of
minutes.  Service times are calibrated by the per-replica figures of ``docs/scale.md`` (a 1-CPU replica:
P = 30 tok/s cold prefill, D = 28 tok/s aggregate decode over 8 slots, both measured by
``corert bench serve --ray`` on a loaded 2-core machine; ``--prefill-tps`` / ``--decode-tps`` to use your
own).  Traffic is offered at ``--load`` of what the replicas sustain when every document is found cached, so
a policy that loses the cache overloads them.

Parts:
  scale      prefix / random / least-loaded routing at each of --replicas: hit rates (the router's verdict
             and the KV pages really found), load imbalance (max / mean ongoing requests per replica), the
             router table's keys and bytes, the routing decision's time, TTFT
  staleness  at --at replicas: a smaller KV pool per replica (the router's table outlives the pages it points
             to) and several ingresses (each with its own table and its own view of queue lengths)
  scaleup    --autoscale --at/4 : --at, traffic stepping from the first load to the second a quarter in;
             how long a new replica takes to serve (Serve's decision to ready) against the hit rate
  failure    one replica dies halfway: requests retried, failed, hit rate
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import attrs

from corert.errors import InputError
from corert.tools.bench.routing_sim import SimConfig, simulate

PARTS = ("scale", "staleness", "scaleup", "failure")
POLICIES = ("prefix", "random", "least_loaded")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replicas", default="10,100,1000", help="replica counts of the scale part (default 10,100,1000)")
    p.add_argument("--requests", type=int, default=0, help="requests per run (default 40 per replica, at most 12,000)")
    p.add_argument("--documents", type=int, default=0, help="shared documents (default 2 per replica)")
    p.add_argument("--at", type=int, default=100, help="replicas of the staleness, scaleup, failure parts (100)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"which parts (default {','.join(PARTS)})")
    p.add_argument("--load", type=float, default=0.5, help="offered load / capacity with documents cached (0.5)")
    p.add_argument("--zipf", type=float, default=1.0, help="documents' Zipf exponent (default 1.0)")
    p.add_argument("--kv-documents", type=float, default=4.6, help="KV pool per replica, in documents (4.6)")
    p.add_argument("--prefill-tps", type=float, default=30.0, help="a replica's cold prefill tok/s (30)")
    p.add_argument("--decode-tps", type=float, default=28.0, help="a replica's aggregate decode tok/s (28)")
    p.add_argument("--start-s", type=float, default=20.0, help="a new replica's start, decision to serving (20)")
    p.add_argument("--seed", type=int, default=0)


def _counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 2:
        raise InputError(f"--replicas wants replica counts of at least 2 separated by commas, not {text!r}")
    return counts


def _check(args: argparse.Namespace) -> tuple[list[int], list[str]]:
    counts = _counts(args.replicas)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if not parts or set(parts) - set(PARTS):
        raise InputError(f"--parts takes some of {','.join(PARTS)}, not {args.parts!r}")
    if args.at < 4:
        raise InputError(f"--at must be at least 4 replicas, not {args.at}")
    if args.requests < 0 or args.documents < 0 or (args.requests and args.requests < 20):
        raise InputError("--requests must be at least 20 and --documents positive (0: the default)")
    for name in ("load", "zipf", "kv_documents", "prefill_tps", "decode_tps"):
        if not getattr(args, name) > 0:
            raise InputError(f"--{name.replace('_', '-')} must be positive, not {getattr(args, name)}")
    if args.start_s < 0:
        raise InputError(f"--start-s must be 0 or more, not {args.start_s}")
    return counts, parts


def _base(args: argparse.Namespace, replicas: int) -> SimConfig:
    base = SimConfig()
    return SimConfig(replicas=replicas, requests=args.requests or min(40 * replicas, 12000),
                     documents=args.documents or 2 * replicas, zipf=args.zipf, load=args.load,
                     kv_documents=args.kv_documents, start_s=args.start_s, seed=args.seed,
                     service=attrs.evolve(base.service, prefill_tps=args.prefill_tps, decode_tps=args.decode_tps))


def run(args: argparse.Namespace) -> dict[str, Any]:
    counts, parts = _check(args)
    wall, cpu = time.perf_counter(), time.process_time()
    at = _base(args, args.at)
    out: dict[str, Any] = {"calibration": {
        "prefill_tps": args.prefill_tps, "decode_tps": args.decode_tps, "n_seqs": at.service.n_seqs,
        "max_ongoing": at.service.max_ongoing, "page_tokens": at.service.page_tokens,
        "doc_tokens": at.doc_tokens, "question_tokens": at.question_tokens, "gen_tokens": at.gen_tokens,
        "cached_service_s": at.cached_service_s(), "kv_documents": args.kv_documents, "load": args.load,
        "zipf": args.zipf, "source": "docs/scale.md: 1-CPU replica, corert bench serve --ray, load 12-17"}}
    if "scale" in parts:
        out["scale"] = [simulate(attrs.evolve(_base(args, n), policy=p)) for n in counts for p in POLICIES]
    if "staleness" in parts:
        out["staleness"] = (
            [dict(simulate(attrs.evolve(at, policy=p, kv_documents=k)), kv_documents=k)
             for k in (2.0, args.kv_documents, 10.0) for p in ("prefix", "random")]
            + [simulate(attrs.evolve(at, ingresses=i)) for i in (4, 16)])
    if "scaleup" in parts:
        out["scaleup"] = [dict(simulate(attrs.evolve(at, autoscale=(args.at // 4, args.at), start_s=s, policy=p)),
                               start_s=s)
                          for s in (0.0, args.start_s, 60.0, 120.0) for p in ("prefix",)]
    if "failure" in parts:
        out["failure"] = [simulate(attrs.evolve(at, die_at=0.5, policy=p)) for p in ("prefix", "random")]
    out["wall_s"], out["cpu_s"] = time.perf_counter() - wall, time.process_time() - cpu
    return out


def _row(r: dict[str, Any], first: str) -> str:
    return (f"{first:<22} {r['policy']:<12} {r['router_hit_rate']:>6.3f} {r['kv_hit_rate']:>6.3f} "
            f"{r['stale_hit_rate']:>6.3f} {r['imbalance_max_over_mean']:>6.2f} {r['ttft_p50_s']:>8.1f} "
            f"{r['ttft_p95_s']:>8.1f} {r['table_keys']:>7} {r['table_bytes'] / 1e6:>6.2f} "
            f"{r['route_us_mean']:>7.1f} {r['route_us_p99']:>7.1f}")


HEADER = (f"{'':<22} {'policy':<12} {'router':>6} {'kv':>6} {'stale':>6} {'imbal':>6} {'ttft50':>8} "
          f"{'ttft95':>8} {'keys':>7} {'MB':>6} {'us/req':>7} {'us p99':>7}")


def render(result: dict[str, Any]) -> str:
    c = result["calibration"]
    lines = [f"routing simulation: prefill {c['prefill_tps']} tok/s, decode {c['decode_tps']} tok/s per replica "
             f"({c['n_seqs']} slots, at most {c['max_ongoing']} ongoing), documents of {c['doc_tokens']} tokens, "
             f"KV {c['kv_documents']} documents per replica, load {c['load']}, Zipf {c['zipf']}",
             "router: hit rate as the router saw it; kv: prompt tokens found cached; stale: router hits whose "
             "pages were gone; imbal: max/mean ongoing; ttft in simulated s; keys/MB: the router table; "
             "us/req: the routing decision's CPU time", HEADER]
    for r in result.get("scale", []):
        lines.append(_row(r, f"{r['replicas']} replicas"))
    for r in result.get("staleness", []):
        what = f"kv {r['kv_documents']} docs" if "kv_documents" in r else f"{r['ingresses']} ingresses"
        lines.append(_row(r, what))
    for r in result.get("scaleup", []):
        lines.append(_row(r, f"start {r['start_s']:.0f} s") + f"  (replicas {r['replicas_at_end']} at end)")
    for r in result.get("failure", []):
        lines.append(_row(r, "one replica dies") + f"  (retried {r['retried']}, failed {r['failed']})")
    lines.append(f"wall time {result['wall_s']:.1f} s, CPU time {result['cpu_s']:.1f} s")
    return "\n".join(lines)
