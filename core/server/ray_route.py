"""Prefix-aware routing for corert replicas on Ray Serve, through Serve's request-router extension point
(``ray.serve.request_router.RequestRouter``, alpha in Ray 2.60).

A prompt is cut into blocks of ``block_chars`` characters; key k is a hash of its first k blocks
(:func:`prefix_keys`, computed by the ingress).  The router keeps, per key, the replica it last sent that
prefix to (an LRU table): that replica's paged KV cache holds the prefix's pages, so it prefills only the
rest.  A request goes to the replica owning its longest known prefix; a prompt nobody holds goes to the
least loaded replica (queue lengths Serve's router caches; among equals, the one given the fewest new
prefixes so far), which then owns it at once, so a burst of
requests sharing a new prefix follows the first.  Load balance decides ties and spills over: the owner is
ranked first, the others after it, and Serve moves on to the next rank when the owner's queue is full
(``max_ongoing_requests``).  The ``random`` policy (a uniform choice) is the baseline of
``corert bench serve --ray``.

Random routing (the baseline) records where prefixes went too, so its hit rate counts the requests that
landed by chance where their prefix was.  The router lives in the process of the handle that calls the
replicas (the ingress); :func:`routers` is how that process's ``/metrics`` finds its routing counters.
"""
from __future__ import annotations

import collections
import hashlib
import random
import threading
import weakref
from typing import Any, Sequence

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

BLOCK_CHARS = 256  # ~64 tokens of English: 4 KV pages of 16 tokens
MAX_BLOCKS = 64
TABLE_SIZE = 65536  # prefix keys remembered (LRU); ~100 bytes each

_ROUTERS: "weakref.WeakSet[PrefixRouter]" = weakref.WeakSet()


def prefix_keys(text: str, block_chars: int = BLOCK_CHARS, max_blocks: int = MAX_BLOCKS) -> tuple[int, ...]:
    """Hashes of the text's first 1, 2, … whole blocks (a prompt shorter than a block has none)."""
    h = hashlib.blake2b(digest_size=8)
    keys = []
    data = text.encode("utf-8", "surrogatepass")
    step = block_chars  # bytes, not characters: cheap, and equal texts still give equal keys
    for k in range(min(len(data) // step, max_blocks)):
        h.update(data[k * step:(k + 1) * step])
        keys.append(int.from_bytes(h.copy().digest(), "little"))
    return tuple(keys)


class PrefixTable:
    """Prefix key -> the replica id that holds it, least recently used first out."""

    def __init__(self, capacity: int = TABLE_SIZE):
        self.capacity = capacity
        self._owner: collections.OrderedDict[int, str] = collections.OrderedDict()

    def match(self, keys: Sequence[int], live: set[str]) -> tuple[str | None, int]:
        """The live replica holding the longest of these prefixes, and how many blocks long it is."""
        for depth in range(len(keys), 0, -1):
            owner = self._owner.get(keys[depth - 1])
            if owner is not None and owner in live:
                self._owner.move_to_end(keys[depth - 1])
                return owner, depth
        return None, 0

    def record(self, keys: Sequence[int], replica: str) -> None:
        for key in keys:
            self._owner[key] = replica
            self._owner.move_to_end(key)
        while len(self._owner) > self.capacity:
            self._owner.popitem(last=False)

    def drop(self, replica: str) -> None:
        for key in [k for k, r in self._owner.items() if r == replica]:
            del self._owner[key]

    def __len__(self) -> int:
        return len(self._owner)


class RouteStats:
    """What the router decided: requests per replica, and of the requests with a prefix, how many went to
    the replica that already held it (hits) or to another (misses: a new prefix, or the owner was full)."""

    def __init__(self):
        self.lock = threading.Lock()  # Serve's router runs on its own event loop thread
        self.by_replica: collections.Counter[str] = collections.Counter()
        self.hits = self.misses = self.no_prefix = 0

    def count(self, replica: str, keyed: bool, hit: bool) -> None:
        with self.lock:
            self.by_replica[replica] += 1
            if not keyed:
                self.no_prefix += 1
            elif hit:
                self.hits += 1
            else:
                self.misses += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            keyed = self.hits + self.misses
            return {"by_replica": dict(self.by_replica), "hits": self.hits, "misses": self.misses,
                    "no_prefix": self.no_prefix, "hit_rate": self.hits / keyed if keyed else 0.0}


def _forwarded(pending: PendingRequest | None) -> Any:
    args = pending.args if pending is not None else ()
    return args[0] if args and hasattr(args[0], "route_keys") else None


class PrefixRouter(RequestRouter):
    """Ray 2.60 does not call ``on_request_routed``: a request is counted where it is decided, in
    ``choose_replicas``, once (Serve may ask again for the same request after a rejection)."""

    def initialize_state(self, policy: str = "prefix", table_size: int = TABLE_SIZE, **_: Any) -> None:
        if policy not in ("prefix", "random"):
            raise ValueError(f"routing policy must be 'prefix' or 'random', not {policy!r}")
        self.policy = policy
        self.table = PrefixTable(table_size)
        self.stats = RouteStats()
        #: new prefixes given to each replica: the tie-break among equally loaded ones, so a burst of new
        #: prefixes (Serve's queue lengths lag behind) is spread evenly instead of at random
        self.claimed: collections.Counter[str] = collections.Counter()
        self._counted: collections.OrderedDict[str, None] = collections.OrderedDict()
        # Serve may hand the replica's process this class pickled by value, with module globals of its own:
        # register in the importable module, the one /metrics reads
        import corert.server.ray_route as home

        home._ROUTERS.add(self)

    def _load(self, replica: RunningReplica) -> int:
        return self.replica_queue_len_cache.get(replica.replica_id) or 0

    def _full(self, replica: RunningReplica) -> bool:
        return self._load(replica) >= replica.max_ongoing_requests

    def _least_loaded(self, replicas: list[RunningReplica]) -> RunningReplica:
        low = min(self._load(r) for r in replicas)
        tied = [r for r in replicas if self._load(r) == low]
        fewest = min(self.claimed[r.replica_id.unique_id] for r in tied)
        return random.choice([r for r in tied if self.claimed[r.replica_id.unique_id] == fewest])

    def _first_time(self, pending: PendingRequest | None) -> bool:
        rid = pending.metadata.internal_request_id if pending is not None else None
        if rid is None or rid in self._counted:
            return rid is None
        self._counted[rid] = None
        while len(self._counted) > 4096:
            self._counted.popitem(last=False)
        return True

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        fwd = _forwarded(pending_request)
        if fwd is not None and fwd.pin is not None:  # a metrics scrape, not traffic
            return [[r for r in candidate_replicas if r.replica_id.unique_id == fwd.pin]]
        keys = fwd.route_keys if fwd is not None else ()
        candidate_replicas = self._holding_model(candidate_replicas, pending_request)
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        if self.policy == "random":
            chosen = random.choice(candidate_replicas)
            owner, _ = self.table.match(keys, set(by_id)) if keys else (None, 0)
            hit = owner == chosen.replica_id.unique_id
        else:
            owner, _ = self.table.match(keys, set(by_id)) if keys else (None, 0)
            hit = owner is not None and not self._full(by_id[owner])
            chosen = by_id[owner] if hit else self._least_loaded(candidate_replicas)
            if keys and owner is None:
                self.claimed[chosen.replica_id.unique_id] += 1
        if keys:  # claimed now: a burst of requests sharing a new prefix follows the first
            self.table.record(keys, chosen.replica_id.unique_id)
        if self._first_time(pending_request):
            self.stats.count(chosen.replica_id.unique_id, bool(keys), hit)
        rest = sorted((r for r in candidate_replicas if r is not chosen), key=self._load)
        return [[chosen], rest] if rest else [[chosen]]

    def _holding_model(self, replicas: list[RunningReplica], pending: PendingRequest | None) -> list[RunningReplica]:
        """With models loaded on demand (``serve.multiplexed``): the replicas that have the request's model
        and room, if any (else all: the chosen one loads it)."""
        model = pending.metadata.multiplexed_model_id if pending is not None else ""
        if not model:
            return replicas
        holding = [r for r in replicas if model in r.multiplexed_model_ids and not self._full(r)]
        return holding or replicas

    def on_replica_actor_died(self, replica_id: Any) -> None:
        super().on_replica_actor_died(replica_id)
        self.table.drop(replica_id.unique_id)

    def replica_ids(self) -> list[str]:
        return sorted(r.unique_id for r in self.curr_replicas)


def routers() -> list[PrefixRouter]:
    """The prefix routers of this process (one per deployment handle that calls corert replicas)."""
    return list(_ROUTERS)
