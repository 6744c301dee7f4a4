"""Counters and queue-wait percentiles of one scheduler (the caller holds the scheduler's lock)."""
from __future__ import annotations

import collections
import math
from typing import Iterable

import attrs

from corert.interfaces import PRIORITIES

#: Queue waits kept per priority for the percentiles: recent behaviour, bounded memory.
WAIT_WINDOW = 4096


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); None for no values."""
    data = sorted(values)
    if not data:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(data)))
    return data[rank - 1]


@attrs.define
class SchedulerStats:
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    timed_out: int = 0
    rejected: int = 0    # refused at submit: queue full
    overran: int = 0     # kept running after its future was settled (timeout/cancel), result dropped
    steals: int = 0
    waits: dict[str, collections.deque] = attrs.field(
        factory=lambda: {p: collections.deque(maxlen=WAIT_WINDOW) for p in PRIORITIES})

    def record_wait(self, priority: str, seconds: float) -> None:
        self.waits[priority].append(seconds)

    def snapshot(self) -> dict:
        """Counters and copies of the wait windows: cheap, taken under the scheduler's lock."""
        counters = {k: getattr(self, k) for k in ("submitted", "completed", "failed", "cancelled", "timed_out",
                                                  "rejected", "overran", "steals")}
        return {**counters, "waits": {p: list(q) for p, q in self.waits.items()}}


def summarize(snapshot: dict) -> dict:
    """The snapshot with its waits turned into percentiles (sorting: done outside the lock)."""
    def summary(values: list[float]) -> dict:
        p50, p95 = percentile(values, 50), percentile(values, 95)
        return {"n": len(values), "p50": None if p50 is None else p50 * 1e3,
                "p95": None if p95 is None else p95 * 1e3}

    out = dict(snapshot)
    waits = out.pop("waits")
    out["queue_wait_ms"] = summary([w for q in waits.values() for w in q])
    out["queue_wait_ms_by_priority"] = {p: summary(q) for p, q in waits.items()}
    return out
