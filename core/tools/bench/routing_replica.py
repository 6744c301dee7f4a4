"""One simulated replica of ``corert bench routing``: the paged KV cache's own page accounting and a
service-time model of continuous batching.

KV: :class:`~corert.plugins.kv_cache.paged.blocks.PagePool`, the integer accounting the native engine's
paged store runs on.  A request takes the pages of its document that the pool still caches (found by chain
hash, as the store finds them), allocates the rest, registers its document's pages at once (as the store's
``reserve`` does: the engine prefills a prompt in one step, so a request admitted after it finds them
computed) and frees its pages when it ends: they stay cached in the free list, oldest freed handed out first.
So the pool evicts what the router still believes a replica holds, which is how the router's view goes stale.

Service: the replica is one processor shared by its running requests (at most ``n_seqs``: the batch), at a
fixed total rate: prefill of the tokens not cached at ``prefill_tps``, then decode at ``decode_tps``
(aggregate over the batch), each request getting 1/k of the replica while k run.  More accepted requests
wait in the replica, in order, for a slot and for pages.
"""
from __future__ import annotations

import collections
from typing import Sequence

import attrs

from corert.plugins.kv_cache.paged.blocks import PagePool

#: one full page of a document: (chain hash, previous page's hash, the page's token ids)
PageKey = tuple[int, int, tuple[int, ...]]
DONE = 1e-9  # replica-seconds of work left that count as none (float sums of shares)


@attrs.frozen
class ServiceModel:
    prefill_tps: float
    decode_tps: float
    n_seqs: int
    max_ongoing: int
    page_tokens: int
    kv_pages: int


@attrs.define(eq=False)
class SimRequest:
    rid: int
    arrival: float
    ingress: int
    keys: tuple[int, ...]  # the router's prefix keys of the prompt text
    chain: Sequence[PageKey]  # the document's full pages
    prompt_tokens: int
    gen_tokens: int
    replica: str | None = None
    hit: bool | None = None  # the router's verdict at its first decision on this request
    cached_tokens: int = 0
    phase: str = "new"  # new | waiting | prefill | decode | done | failed
    work: float = 0.0  # replica-seconds left in the current phase
    pages: list[int] = attrs.field(factory=list)
    ttft: float | None = None
    end: float | None = None
    retried: bool = False


@attrs.define(eq=False)
class SimReplica:
    name: str
    model: ServiceModel
    pool: PagePool = attrs.field(init=False)
    running: list[SimRequest] = attrs.field(factory=list)
    waiting: collections.deque = attrs.field(factory=collections.deque)
    clock: float = 0.0  # running requests' work is accounted up to here
    version: int = 0  # bumped at every change: an older completion event is void

    def __attrs_post_init__(self) -> None:
        self.pool = PagePool(self.model.kv_pages)

    @property
    def ongoing(self) -> int:
        """Serve's ongoing requests of the replica: running and waiting in it."""
        return len(self.running) + len(self.waiting)

    def accepts(self) -> bool:
        return self.ongoing < self.model.max_ongoing

    def advance(self, now: float) -> None:
        if self.running and now > self.clock:
            share = (now - self.clock) / len(self.running)
            for r in self.running:
                r.work -= share
        self.clock = max(self.clock, now)

    def next_event(self) -> float | None:
        """When the next running request ends its phase, if nothing changes before."""
        if not self.running:
            return None
        return self.clock + max(0.0, min(r.work for r in self.running)) * len(self.running)

    def accept(self, req: SimRequest, now: float) -> None:
        self.advance(now)
        req.replica, req.phase = self.name, "waiting"
        self.waiting.append(req)
        self._admit()
        self.version += 1

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.model.n_seqs and self._start(self.waiting[0]):
            self.running.append(self.waiting.popleft())

    def _start(self, req: SimRequest) -> bool:
        pool, m = self.pool, self.model
        matched = []
        for h, prev, tokens in req.chain:
            page = pool.lookup(h, prev, tokens)
            if page is None:
                break
            matched.append(page)
        need = -(-(req.prompt_tokens + req.gen_tokens) // m.page_tokens) - len(matched)
        if len(pool.free) - sum(1 for p in matched if pool.ref[p] == 0) < need:
            return False  # waits for pages, like the engine's admission
        for p in matched:
            pool.incref(p)
        new = [pool.allocate() for _ in range(need)]
        req.pages = matched + new
        for page, (h, prev, tokens) in zip(new, req.chain[len(matched):]):
            pool.register(page, h, prev, tokens)
        req.cached_tokens = len(matched) * m.page_tokens
        req.phase, req.work = "prefill", (req.prompt_tokens - req.cached_tokens) / m.prefill_tps
        return True

    def step(self, now: float) -> list[SimRequest]:
        """Move every request whose phase is over on (prefill -> decode -> done); the ones done."""
        self.advance(now)
        done = []
        for r in [r for r in self.running if r.work <= DONE]:
            if r.phase == "prefill":
                r.ttft, r.phase, r.work = now - r.arrival, "decode", r.gen_tokens / self.model.decode_tps
            else:
                for page in r.pages:
                    self.pool.decref(page)
                r.phase, r.end = "done", now
                self.running.remove(r)
                done.append(r)
        self._admit()
        self.version += 1
        return done

    def kill(self) -> list[SimRequest]:
        """The replica's process died: every request it held, its cache gone with it."""
        lost = self.running + list(self.waiting)
        self.running, self.waiting = [], collections.deque()
        self.version += 1
        return lost
