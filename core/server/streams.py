"""Blocking Runtime streams -> the event loop.

``Runtime.stream`` / ``Runtime.chat(stream=True)`` return blocking iterators.  Each choice of a request runs
its iterator on a thread of its own and hands every chunk to the event loop with ``call_soon_threadsafe``,
so the loop never blocks on a token.  Cancelling the group (client gone) makes each thread close its
iterator at its next chunk: closing sets the Runtime request's cancel event, the generation loop ends within
one token, and the batch service drops the stream and frees its KV pages.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, AsyncIterator, Callable, Iterator

import attrs

@attrs.frozen
class Item:
    index: int
    chunk: Any  # a StreamChunk
    at: float  # perf_counter when the thread received it


class _Failed:
    def __init__(self, index: int, exc: BaseException):
        self.index, self.exc = index, exc


class _Ended:
    def __init__(self, index: int):
        self.index = index


class LiveThreads:
    """How many stream threads are alive (a leak check reads it from /metrics)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.count = 0

    def add(self, delta: int) -> None:
        with self._lock:
            self.count += delta


class StreamGroup:
    """The choices of one request, each on its own thread; iterate to get their chunks in arrival order."""

    def __init__(self, threads: LiveThreads):
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._stop = threading.Event()
        self._threads = threads
        self._running = 0
        self._followers: dict[int, list[tuple[int, Callable[[], Iterator[Any]]]]] = {}

    def start(self, index: int, open_stream: Callable[[], Iterator[Any]], after: int | None = None) -> None:
        """Run choice ``index``; with ``after``, only once choice ``after`` has sent its first chunk (or
        ended)."""
        self._running += 1
        if after is not None:
            self._followers.setdefault(after, []).append((index, open_stream))
            return
        self._threads.add(1)
        threading.Thread(target=self._run, args=(index, open_stream), daemon=True,
                         name=f"corert-serve-choice-{index}").start()

    def _release_followers(self, index: int) -> None:
        for follower, open_stream in self._followers.pop(index, ()):
            self._running -= 1
            if not self._stop.is_set():
                self.start(follower, open_stream)

    def cancel(self) -> None:
        """Stop every choice; each thread closes its Runtime stream at its next chunk."""
        self._stop.set()

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed (server shutting down): nobody is listening
            pass

    def _run(self, index: int, open_stream: Callable[[], Iterator[Any]]) -> None:
        try:
            stream = open_stream()
            try:
                for chunk in stream:
                    self._put(Item(index, chunk, time.perf_counter()))
                    if self._stop.is_set():
                        break
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # noqa: BLE001 - delivered to the request, not lost in a thread
            self._put(_Failed(index, exc))
        finally:
            self._threads.add(-1)
            self._put(_Ended(index))

    async def __aiter__(self) -> AsyncIterator[Item]:
        """Chunks of every choice until all end; the first choice's error is raised (the rest are stopped)."""
        try:
            while self._running:
                item = await self._queue.get()
                if isinstance(item, _Ended):
                    self._running -= 1
                    self._release_followers(item.index)  # a leader that sent nothing: start them anyway
                elif isinstance(item, _Failed):
                    raise item.exc
                else:
                    self._release_followers(item.index)
                    yield item
        finally:
            self.cancel()
