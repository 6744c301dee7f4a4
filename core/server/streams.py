"""Runtime streams -> the event loop.

``Runtime.stream`` / ``Runtime.chat(stream=True)`` return blocking iterators.  Each choice of a request is
opened on a thread of its own (a grammar may compile: not on the loop).  A stream that can push its chunks
(:class:`corert.chunk_stream.ChunkStream`) then hands each one, on the thread that produced it, to the loop's
:class:`Inbox`, and the opening thread ends: no thread per stream and one loop wake-up for every chunk that
arrives together (a batch step's tokens for all streams).  Any other iterator (a chat with tools) is
iterated on its thread.  Cancelling the group (client gone) closes every stream: closing sets the Runtime
request's cancel event, the generation loop ends within one token, and the batch service drops the stream
and frees its KV pages.
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
import weakref
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
    """How many choices are still running, on a thread or pushing their chunks (a leak check reads it from
    /metrics)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.count = 0

    def add(self, delta: int) -> None:
        with self._lock:
            self.count += delta


class Inbox:
    """Items for the event loop from any thread: the first item after a drain schedules one drain, later ones
    ride along (``call_soon_threadsafe`` wakes the loop once per burst, not once per token)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = weakref.ref(loop)  # not a strong one: the loops' table would keep every loop alive
        self._items: collections.deque = collections.deque()
        self._scheduled = False

    def put(self, deliver: Callable[[Any], None], item: Any) -> None:
        self._items.append((deliver, item))
        if not self._scheduled:  # a race only schedules a second, empty drain
            self._scheduled = True
            loop = self._loop()
            try:
                if loop is not None:
                    loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed (server shutting down): nobody is listening
                pass

    def _drain(self) -> None:
        self._scheduled = False  # before draining: an item appended from now on schedules another drain
        items = self._items
        while items:
            deliver, item = items.popleft()
            deliver(item)


_inboxes: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Inbox]" = weakref.WeakKeyDictionary()


def _inbox(loop: asyncio.AbstractEventLoop) -> Inbox:
    inbox = _inboxes.get(loop)
    if inbox is None:
        inbox = _inboxes[loop] = Inbox(loop)
    return inbox


class StreamGroup:
    """The choices of one request; iterate to get their chunks in arrival order."""

    def __init__(self, threads: LiveThreads):
        self._loop = asyncio.get_running_loop()
        self._inbox = _inbox(self._loop)
        self._queue: asyncio.Queue = asyncio.Queue()
        self._stop = threading.Event()
        self._threads = threads
        self._running = 0
        self._followers: dict[int, list[tuple[int, Callable[[], Iterator[Any]]]]] = {}
        self._pushing: list[Any] = []  # streams that push their chunks: closed by cancel()

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
        """Stop every choice: pushing streams are closed now, a thread closes its stream at its next chunk."""
        self._stop.set()
        for stream in list(self._pushing):
            stream.close()

    def _put(self, item: Any) -> None:
        self._inbox.put(self._queue.put_nowait, item)

    def _push(self, index: int, stream: Any) -> None:
        """Let ``stream`` hand its chunks to the loop from the producer's thread; this thread ends."""

        def end(exc: BaseException | None) -> None:
            if exc is not None:
                self._put(_Failed(index, exc))
            self._threads.add(-1)
            self._put(_Ended(index))

        self._pushing.append(stream)
        stream.push_to(lambda chunk: self._put(Item(index, chunk, time.perf_counter())), end)
        if self._stop.is_set():  # cancelled while it opened: cancel() may have missed it
            stream.close()

    def _run(self, index: int, open_stream: Callable[[], Iterator[Any]]) -> None:
        try:
            stream = open_stream()
            if hasattr(stream, "push_to"):
                self._push(index, stream)
                return
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
