"""Prefix-aware routing for corert replicas on Ray Serve, through Serve's request-router extension point
(``ray.serve.request_router.RequestRouter``, alpha in Ray 2.60).

The decision itself is :class:`~corert.server.prefix_route.PrefixChooser` (no Ray there, so
``corert bench routing`` simulates it at scale): a request goes to the replica owning its longest known
prefix, a new prefix to the least loaded replica, which owns it at once.  This adapter gives it Serve's view
of the replicas (ids, cached queue lengths, ``max_ongoing_requests``) and hands Serve its ranking: the owner
first, the others after it by load, so Serve moves on to the next rank when the owner's queue is full.  The
``random`` policy (a uniform choice) is the baseline of ``corert bench serve --ray``.

The router lives in the process of the handle that calls the replicas (the ingress); :func:`routers` is how
that process's ``/metrics`` finds its routing counters.
"""
from __future__ import annotations

import collections
import weakref
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from .prefix_route import TABLE_SIZE, PrefixChooser, RouteStats, prefix_keys

__all__ = ["PrefixRouter", "prefix_keys", "routers"]

_ROUTERS: "weakref.WeakSet[PrefixRouter]" = weakref.WeakSet()


def _forwarded(pending: PendingRequest | None) -> Any:
    args = pending.args if pending is not None else ()
    return args[0] if args and hasattr(args[0], "route_keys") else None


class PrefixRouter(RequestRouter):
    """Ray 2.60 does not call ``on_request_routed``: a request is counted where it is decided, in
    ``choose_replicas``, once (Serve may ask again for the same request after a rejection)."""

    def initialize_state(self, policy: str = "prefix", table_size: int = TABLE_SIZE, **_: Any) -> None:
        if policy not in ("prefix", "random"):  # what `corert serve --ray --route` offers
            raise ValueError(f"routing policy must be 'prefix' or 'random', not {policy!r}")
        self.policy = policy
        self.chooser = PrefixChooser(policy, table_size)
        self.stats = RouteStats()
        self._counted: collections.OrderedDict[str, None] = collections.OrderedDict()
        # Serve may hand the replica's process this class pickled by value, with module globals of its own:
        # register in the importable module, the one /metrics reads
        import corert.server.ray_route as home

        home._ROUTERS.add(self)

    def _load(self, replica: RunningReplica) -> int:
        return self.replica_queue_len_cache.get(replica.replica_id) or 0

    def _full(self, replica: RunningReplica) -> bool:
        return self._load(replica) >= replica.max_ongoing_requests

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
        chosen, hit, rest = self.chooser.choose(keys, list(by_id), lambda rid: self._load(by_id[rid]),
                                                lambda rid: self._full(by_id[rid]))
        if self._first_time(pending_request):
            self.stats.count(chosen, bool(keys), hit)
        return [[by_id[chosen]], [by_id[r] for r in rest]] if rest else [[by_id[chosen]]]

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
        self.chooser.forget(replica_id.unique_id)

    def replica_ids(self) -> list[str]:
        return sorted(r.unique_id for r in self.curr_replicas)


def routers() -> list[PrefixRouter]:
    """The prefix routers of this process (one per deployment handle that calls corert replicas)."""
    return list(_ROUTERS)
