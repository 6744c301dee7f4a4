"""Admission: at most ``slots`` sequences generate at once (the Runtime's ``n_seqs``), up to ``max_queue``
requests wait for slots in arrival order, and a request beyond that is refused at once (429) rather than
queued without end.

Keeping the Runtime's own queues empty makes these counts the server's real queue depth and active
sequences (/metrics reads them).  Releasing never awaits, so a cancelled request (client gone) always gives
its slots back.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import AsyncIterator

from .errors import APIError


class Admission:
    def __init__(self, slots: int, max_queue: int):
        self.slots = max(1, slots)
        self.max_queue = max(0, max_queue)
        self.active = 0  # slots held by running requests
        self._waiters: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @contextlib.asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        """Hold ``n`` slots (at most all of them: a wider request runs its extra choices in the Runtime's
        own queue) for the block; waits in line, or raises a 429 APIError when the line is full."""
        n = min(max(1, n), self.slots)
        if not self._waiters and self.active + n <= self.slots:
            self.active += n
        else:
            if len(self._waiters) >= self.max_queue:
                raise APIError(429, f"the server is busy: {self.active} of {self.slots} slots in use and "
                                    f"{self.waiting} requests waiting (--max-queue {self.max_queue}); retry later",
                               "rate_limit_error", code="queue_full")
            entry = (n, asyncio.get_running_loop().create_future())
            self._waiters.append(entry)
            try:
                await entry[1]  # the releaser counted our slots before waking us
            except BaseException:
                if entry[1].done() and not entry[1].cancelled():
                    self._release(n)  # granted, but cancelled before we could use them
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(entry)
                    self._release(0)  # the ones behind it may fit now
                raise
        try:
            yield
        finally:
            self._release(n)

    def _release(self, n: int) -> None:
        self.active -= n
        while self._waiters and self.active + self._waiters[0][0] <= self.slots:
            want, fut = self._waiters.popleft()
            if not fut.done():
                self.active += want
                fut.set_result(None)
