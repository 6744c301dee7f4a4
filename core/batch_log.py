"""Where a batched request's time goes: one DEBUG line per continuous-batching step and one per request's
first token, on the logger ``corert.batching`` (``CORERT_LOG=debug`` turns it on, in a worker process too,
whose log file then holds the lines).

    step 12: 70 rows for 8 streams (7 joined, 0 waiting), 8 tokens, 40.1 ms
    request 5: first token 63.9 ms after it reached the batch service (queued 16.3 ms, 1 steps)

Read together they say what a first token waited for: ``queued`` is the time until the request joined,
which it does between two steps (behind the step running when it arrived, or, with every sequence slot
taken, until one was freed: ``waiting`` in the step lines); the rest is its own step's rows.  Nothing is
measured unless the logger is enabled for DEBUG: the driver's loop pays one ``isEnabledFor`` per step.
"""
from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("corert.batching")

if os.environ.get("CORERT_LOG", "").lower() == "debug":  # the same switch as llama.cpp's own log lines
    logging.basicConfig()
    log.setLevel(logging.DEBUG)


def enabled() -> bool:
    return log.isEnabledFor(logging.DEBUG)


class RequestTimes:
    """When one request reached the service, was admitted to a slot, and at which step count."""

    __slots__ = ("arrived", "admitted", "steps_at_admission")

    def __init__(self) -> None:
        self.arrived = time.perf_counter()
        self.admitted: float | None = None
        self.steps_at_admission = 0

    def admit(self, steps: int) -> None:
        self.admitted = time.perf_counter()
        self.steps_at_admission = steps


def step(number: int, rows: int, streams: int, joined: int, waiting: int, tokens: int, seconds: float) -> None:
    log.debug("step %d: %d rows for %d streams (%d joined, %d waiting), %d tokens, %.1f ms",
              number, rows, streams, joined, waiting, tokens, seconds * 1e3)


def first_token(sid: int, times: RequestTimes, steps: int) -> None:
    queued = (times.admitted or times.arrived) - times.arrived
    log.debug("request %d: first token %.1f ms after it reached the batch service (queued %.1f ms, %d steps)",
              sid, (time.perf_counter() - times.arrived) * 1e3, queued * 1e3, steps - times.steps_at_admission)
