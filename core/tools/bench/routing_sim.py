"""The event simulation behind ``corert bench routing``: synthetic traffic through the real routing decision
(:class:`~corert.server.prefix_route.PrefixChooser`, the code Serve's router runs) to simulated replicas
(:mod:`.routing_replica`), in simulated time.

Traffic: Poisson arrivals; each request asks about one of ``documents`` shared documents (a system prompt, a
RAG document), drawn with Zipf popularity, followed by a question of its own.  The ingress hashes the prompt
text with the real :func:`~corert.server.prefix_route.prefix_keys`.

What is modelled of Serve (Ray 2.60), each ingress on its own: the router's cached queue lengths
(:class:`LoadView`: +1 on a send, the replica's true count in its accept/reject reply, -1 when a request
ends, forgotten after 10 s); the ranking the router returns, tried in order, a replica refusing beyond
``max_ongoing``; requests no replica takes waiting in the ingress, retried as slots free; the autoscaler
(ongoing requests, replicas' and ingresses', over ``n_seqs`` per replica as ``--autoscale`` sets
``target_ongoing_requests``, looked at every 10 s as they stand, where Serve averages a 30 s look-back; up after
``upscale_delay_s`` above, down after ``downscale_delay_s`` below, a new replica serving ``start_s`` after
the decision); a replica dying (requests with no token yet retried once, the others failed, its prefixes
forgotten, a replacement started).
"""
from __future__ import annotations

import collections
import heapq
import math
import random
import time
from typing import Any

import attrs
import numpy as np

from corert.plugins.kv_cache.paged.blocks import chain_hash
from corert.server.prefix_route import TABLE_SIZE, PrefixChooser, prefix_keys
from corert.tools.bench.routing_replica import PageKey, ServiceModel, SimReplica, SimRequest
from corert.tools.stats import percentile

QUEUE_LEN_TIMEOUT_S = 10.0  # Serve's RAY_SERVE_QUEUE_LENGTH_CACHE_TIMEOUT_S
AUTOSCALE_PERIOD_S = 10.0  # replicas report their queue depth every 10 s
HEALTH_CHECK_S = 10.0  # a dead replica is noticed within one health check (health_check_period_s)
SAMPLE_S = 1.0  # queue lengths sampled for the imbalance figure


@attrs.frozen
class SimConfig:
    replicas: int = 100
    policy: str = "prefix"
    requests: int = 4000
    documents: int = 200
    zipf: float = 1.0
    doc_tokens: int = 1117  # the documents of `corert bench serve --ray`
    question_tokens: int = 16
    gen_tokens: int = 128
    load: float = 0.5  # offered load / capacity when every document is found cached
    #: KV pool per replica, in documents (pages for this many documents' tokens); 4.6 in the measured bench
    kv_documents: float = 4.6
    service: ServiceModel = ServiceModel(prefill_tps=30.0, decode_tps=28.0, n_seqs=8, max_ongoing=16,
                                         page_tokens=16, kv_pages=0)
    ingresses: int = 1
    table_size: int = TABLE_SIZE
    #: (min, max) replicas; traffic starts at the load of min and steps up to the load of max
    autoscale: tuple[int, int] | None = None
    start_s: float = 20.0  # Serve's decision to a new replica serving (process, model load, warm-up)
    upscale_delay_s: float = 10.0
    downscale_delay_s: float = 120.0
    die_at: float | None = None  # a replica dies at this fraction of the arrivals' span
    warmup: float = 0.25  # figures count the requests after this fraction of the arrivals
    seed: int = 0

    def service_model(self) -> ServiceModel:
        pages = math.ceil(self.kv_documents * self.doc_tokens / self.service.page_tokens)
        return attrs.evolve(self.service, kv_pages=max(pages, self.request_pages()))

    def request_pages(self) -> int:
        return -(-(self.doc_tokens + self.question_tokens + self.gen_tokens) // self.service.page_tokens)

    def cached_service_s(self) -> float:
        """One request's replica-seconds when its document is cached (its own pages only)."""
        own = self.doc_tokens % self.service.page_tokens + self.question_tokens
        return own / self.service.prefill_tps + self.gen_tokens / self.service.decode_tps


class LoadView:
    """One ingress's cached queue lengths, as Serve's router keeps them (its ``replica_queue_len_cache``)."""

    def __init__(self, timeout_s: float = QUEUE_LEN_TIMEOUT_S):
        self.timeout_s = timeout_s
        self.entries: dict[str, tuple[int, float]] = {}
        self.now = 0.0

    def get(self, name: str) -> int | None:
        e = self.entries.get(name)
        return None if e is None or self.now - e[1] > self.timeout_s else e[0]

    def load(self, name: str) -> int:
        return self.get(name) or 0  # what PrefixRouter._load reads: unknown or expired is 0

    def reply(self, name: str, ongoing: int) -> None:
        self.entries[name] = (ongoing, self.now)

    def done(self, name: str) -> None:
        cur = self.get(name)
        if cur is not None:
            self.entries[name] = (max(0, cur - 1), self.now)


@attrs.define(eq=False)
class Ingress:
    chooser: PrefixChooser
    view: LoadView
    pending: collections.deque = attrs.field(factory=collections.deque)


class Simulation:
    def __init__(self, cfg: SimConfig):
        self.cfg, self.model = cfg, cfg.service_model()
        self.rng = random.Random(cfg.seed)
        self.events: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.replicas: dict[str, SimReplica] = {}
        self.live: list[str] = []
        self.starting = 0
        self.ingresses = [Ingress(PrefixChooser(cfg.policy, cfg.table_size, random.Random(cfg.seed + 1 + i)),
                                  LoadView()) for i in range(cfg.ingresses)]
        self.requests: list[SimRequest] = []
        self.route_ns: list[int] = []
        self.key_ns: list[int] = []
        self.imbalance: list[float] = []
        self.failed = self.retries = self.deaths = self.waiting_max = 0
        self.replica_count: list[tuple[float, int]] = []
        self._above = self._below = None
        self._filler = " ".join(f"w{i * 7919 % 10007}" for i in range(cfg.doc_tokens))  # ~4 bytes a token
        for _ in range(cfg.autoscale[0] if cfg.autoscale else cfg.replicas):
            self._go_live(self._new_replica())

    # -- traffic -----------------------------------------------------------------------------------------
    def _document(self, d: int) -> tuple[str, list[PageKey]]:
        """A document's text and its full KV pages.  Computed per request, not kept: 10,000 documents' pages
        would take gigabytes.  The text differs from every other document's in its first block, so every
        prefix key does (each hashes all blocks before it); a page's token ids are stood for by
        (document, page), which identify them as well."""
        text = f"smollm2-135m-instruct\nDocument {d}:\n{self._filler}"
        chain, prev = [], -1
        for p in range(self.cfg.doc_tokens // self.model.page_tokens):
            tokens = (d, p)
            h = chain_hash(prev, tokens)
            chain.append((h, prev, tokens))
            prev = h
        return text, chain

    def _arrivals(self) -> None:
        cfg = self.cfg
        gen = np.random.default_rng(cfg.seed)
        weights = 1.0 / np.arange(1, cfg.documents + 1) ** cfg.zipf
        docs = gen.choice(cfg.documents, size=cfg.requests, p=weights / weights.sum())
        rate = [cfg.load * n / cfg.cached_service_s() for n in (cfg.autoscale or (cfg.replicas,))]
        step = cfg.requests // 4 if cfg.autoscale else cfg.requests  # the step up: a quarter in
        gaps = np.concatenate([gen.exponential(1 / rate[0], step), gen.exponential(1 / rate[-1], cfg.requests - step)])
        t = np.cumsum(gaps)
        for i, (at, d) in enumerate(zip(t.tolist(), docs.tolist())):
            self._push(at, "arrive", (i, int(d)))
        self.span = float(t[-1])
        self.warm_t = float(t[int(cfg.warmup * (cfg.requests - 1))])

    def _arrive(self, i: int, d: int) -> None:
        text, chain = self._document(d)
        t0 = time.thread_time_ns()
        keys = prefix_keys(f"{text}\nQuestion {i}: what does the document say about item {i % 97}?")
        self.key_ns.append(time.thread_time_ns() - t0)
        req = SimRequest(i, self.now, self.rng.randrange(self.cfg.ingresses), keys, chain,
                         self.cfg.doc_tokens + self.cfg.question_tokens, self.cfg.gen_tokens)
        self.requests.append(req)
        self._route_or_wait(req)

    # -- routing (what Serve does with the router's ranking) ------------------------------------------------
    def _dispatch(self, req: SimRequest) -> bool:
        ing = self.ingresses[req.ingress]
        view, cap = ing.view, self.model.max_ongoing
        view.now = self.now
        t0 = time.thread_time_ns()
        chosen, hit, rest = ing.chooser.choose(req.keys, self.live, view.load, lambda r: view.load(r) >= cap)
        self.route_ns.append(time.thread_time_ns() - t0)
        if req.hit is None:
            req.hit = hit
        for name in (chosen, *rest):
            rep = self.replicas[name]
            if rep.accepts():
                rep.accept(req, self.now)
                view.reply(name, rep.ongoing)
                self._schedule(rep)
                return True
            view.reply(name, rep.ongoing)  # the rejection carries the replica's true queue length
        return False

    def _route_or_wait(self, req: SimRequest) -> None:
        if not self.live or not self._dispatch(req):
            self.ingresses[req.ingress].pending.append(req)

    def _retry_pending(self) -> None:
        for ing in self.ingresses:
            while ing.pending and self.live and self._dispatch(ing.pending[0]):
                ing.pending.popleft()

    # -- replicas ----------------------------------------------------------------------------------------
    def _new_replica(self) -> SimReplica:
        rep = SimReplica(f"r{len(self.replicas)}", self.model)
        self.replicas[rep.name] = rep
        return rep

    def _go_live(self, rep: SimReplica) -> None:
        rep.clock = self.now
        self.live.append(rep.name)
        self.replica_count.append((self.now, len(self.live)))

    def _schedule(self, rep: SimReplica) -> None:
        t = rep.next_event()
        if t is not None:
            self._push(t, "replica", (rep.name, rep.version))

    def _replica_event(self, name: str, version: int) -> None:
        rep = self.replicas[name]
        if version != rep.version:
            return
        for req in rep.step(self.now):
            view = self.ingresses[req.ingress].view
            view.now = self.now
            view.done(name)
        self._schedule(rep)
        self._retry_pending()

    def _die(self) -> None:
        if not self.live:
            return
        name = self.rng.choice(self.live)
        self.live.remove(name)
        self.deaths += 1
        for ing in self.ingresses:  # Serve tells every handle; the router forgets the dead one's prefixes
            ing.chooser.forget(name)
            ing.view.entries.pop(name, None)
        for req in self.replicas[name].kill():
            if req.ttft is None and not req.retried:  # nothing streamed yet: retried once elsewhere
                req.retried, req.replica, req.phase = True, None, "new"
                self.retries += 1
                self._route_or_wait(req)
            else:
                req.phase, req.end = "failed", self.now
                self.failed += 1
        self.starting += 1
        self._push(self.now + HEALTH_CHECK_S + self.cfg.start_s, "live", None)

    # -- autoscaler --------------------------------------------------------------------------------------
    def _autoscale(self) -> None:
        lo, hi = self.cfg.autoscale
        ongoing = sum(self.replicas[n].ongoing for n in self.live) + sum(len(i.pending) for i in self.ingresses)
        want = min(hi, max(lo, math.ceil(ongoing / self.model.n_seqs)))
        have = len(self.live) + self.starting
        self._above = (self._above if self._above is not None else self.now) if want > have else None
        self._below = (self._below if self._below is not None else self.now) if want < have else None
        if self._above is not None and self.now - self._above >= self.cfg.upscale_delay_s:
            for _ in range(want - have):
                self.starting += 1
                self._push(self.now + self.cfg.start_s, "live", None)
            self._above = None
        elif self._below is not None and self.now - self._below >= self.cfg.downscale_delay_s:
            for name in self.live[len(self.live) - min(have - want, len(self.live) - lo):]:
                self.live.remove(name)  # the newest go; what they hold finishes
            self.replica_count.append((self.now, len(self.live)))
            self._below = None
        if self.now < self.span:
            self._push(self.now + AUTOSCALE_PERIOD_S, "autoscale", None)

    # -- the loop ----------------------------------------------------------------------------------------
    def _push(self, t: float, kind: str, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, payload))

    def run(self) -> dict[str, Any]:
        wall, cpu = time.perf_counter(), time.process_time()
        self._arrivals()
        if self.cfg.autoscale:
            self._push(AUTOSCALE_PERIOD_S, "autoscale", None)
        if self.cfg.die_at is not None:
            self._push(self.cfg.die_at * self.span, "die", None)
        self._push(self.warm_t, "sample", None)  # the imbalance is sampled after the warm-up
        while self.events:
            self.now, _, kind, payload = heapq.heappop(self.events)
            if kind == "arrive":
                self._arrive(*payload)
            elif kind == "replica":
                self._replica_event(*payload)
            elif kind == "live":
                self.starting -= 1
                self._go_live(self._new_replica())
                self._retry_pending()
            elif kind == "autoscale":
                self._autoscale()
            elif kind == "die":
                self._die()
            elif kind == "sample":
                self._sample()
        return self._figures(time.perf_counter() - wall, time.process_time() - cpu)

    def _sample(self) -> None:
        loads = [self.replicas[n].ongoing for n in self.live]
        mean = sum(loads) / len(loads) if loads else 0.0
        if mean > 0:
            self.imbalance.append(max(loads) / mean)
        self.waiting_max = max(self.waiting_max, sum(len(i.pending) for i in self.ingresses))
        if self.now < self.span:
            self._push(self.now + SAMPLE_S, "sample", None)

    def _figures(self, wall_s: float, cpu_s: float) -> dict[str, Any]:
        counted = [r for r in self.requests if r.rid >= self.cfg.warmup * self.cfg.requests]
        served = [r for r in counted if r.phase == "done"]
        ttft = [r.ttft for r in served]
        prompt = sum(r.prompt_tokens for r in served)
        doc_pages = self.cfg.doc_tokens // self.model.page_tokens * self.model.page_tokens
        # the router said "hit" but the replica's pool had evicted (part of) the document: a stale view
        stale = sum(1 for r in served if r.hit and r.cached_tokens < doc_pages)
        tables = [i.chooser.table for i in self.ingresses]
        return {
            "policy": self.cfg.policy, "replicas": self.cfg.replicas, "ingresses": self.cfg.ingresses,
            "requests": len(self.requests), "counted": len(counted), "failed": self.failed, "retried": self.retries,
            "router_hit_rate": sum(1 for r in counted if r.hit) / len(counted) if counted else 0.0,
            "kv_hit_rate": sum(r.cached_tokens for r in served) / prompt if prompt else 0.0,
            "stale_hit_rate": stale / len(served) if served else 0.0,
            "imbalance_max_over_mean": float(np.mean(self.imbalance)) if self.imbalance else 0.0,
            "ttft_p50_s": percentile(ttft, 50), "ttft_p95_s": percentile(ttft, 95),
            "table_keys": max(len(t) for t in tables), "table_bytes": max(t.nbytes() for t in tables),
            "route_us_mean": float(np.mean(self.route_ns)) / 1e3, "route_us_p99": percentile(self.route_ns, 99) / 1e3,
            "keys_us_mean": float(np.mean(self.key_ns)) / 1e3,
            "ingress_waiting_max": self.waiting_max,  # requests no replica took: the replicas are overloaded
            "replicas_at_end": len(self.live), "simulated_s": self.now, "wall_s": wall_s, "cpu_s": cpu_s,
        }


def simulate(cfg: SimConfig) -> dict[str, Any]:
    return Simulation(cfg).run()
