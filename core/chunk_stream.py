"""What ``Runtime.stream`` returns: a blocking iterator of StreamChunks that a consumer with an event loop can
turn into callbacks (``push_to``), so a server needs no thread per stream and no hand-off per token.

The producer (the batched request's waiter, or the isolation reader thread) calls ``Channel.put`` with each
chunk, then ``DONE``.  Until ``push_to`` is called the chunks queue up for ``__next__``; after it, each goes
straight to the sink on the producer's thread, the queued ones first and in order.  A request served by a
worker process may give the channel a reader (``read_with``): then the iterating consumer, finding its queue
empty, reads the worker's next message on its own thread instead of waiting for the reader thread to hand it
over (one wake-up per token fewer, on cores the decoding worker needs).
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator, Protocol

DONE = object()  # the request's future is done: its result (or error) is ready


class OwnReader(Protocol):
    """How a consumer reads its request's next message itself (corert.isolation.supervisor.DirectReader)."""

    def pump(self, idle: Callable[[], bool]) -> bool:
        """Read and dispatch one message while ``idle()`` (nothing queued for this consumer yet); False when it
        did not read (the request ended, the worker is gone): the producer puts what comes next."""

    def leave(self) -> None:
        """This consumer reads no more (push mode)."""


class Channel:
    """Chunks from the producing thread: queued for an iterator, or handed to a sink once ``redirect`` is
    called.  Calling it puts a chunk (it is the ``emit`` of its request)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._sink: Callable[[Any], None] | None = None
        self._reader: OwnReader | None = None

    def put(self, item: Any) -> None:
        if self._sink is None:
            with self._lock:
                if self._sink is None:
                    self._queue.put(item)
                    return
        self._sink(item)

    __call__ = put

    def read_with(self, reader: OwnReader | None) -> None:
        """While ``reader`` is set, ``get`` reads the next message itself when nothing is queued."""
        self._reader = reader

    def get(self) -> Any:
        while (reader := self._reader) is not None:
            try:
                return self._queue.get_nowait()
            except queue.Empty:
                pass
            if not reader.pump(self._queue.empty):
                break
        return self._queue.get()

    def redirect(self, sink: Callable[[Any], None]) -> None:
        """From now on ``put`` calls ``sink``; what was queued goes to it first (under the lock, so a chunk
        put meanwhile cannot overtake it)."""
        reader, self._reader = self._reader, None
        if reader is not None:  # the producer's thread delivers from now on
            reader.leave()
        with self._lock:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                sink(item)
            self._sink = sink


class ChunkStream:
    """Iterate it (blocking), or call ``push_to`` once before iterating.  Dropping or closing it before
    the end cancels the request, as with a generator."""

    __slots__ = ("_iter", "_channel", "_finish", "_stop")

    def __init__(self, chunks: Iterator[Any], channel: Channel, finish: Callable[[], None],
                 stop: Callable[[], None]):
        #: ``finish`` ends the request's hooks and raises its error (called once, after DONE, in push mode);
        #: ``stop`` cancels the request
        self._iter, self._channel, self._finish, self._stop = chunks, channel, finish, stop

    def __iter__(self) -> "ChunkStream":
        return self

    def __next__(self) -> Any:
        return next(self._iter)

    def close(self) -> None:
        """Cancel the request (the worker stops within one token); in push mode ``end`` still follows."""
        self._iter.close()
        self._stop()

    def push_to(self, sink: Callable[[Any], None], end: Callable[[BaseException | None], None]) -> None:
        """Hand each chunk to ``sink``, then call ``end`` with None or the request's error, on the
        producer's thread (keep both short: they hold up the tokens of every stream)."""

        finish = self._finish  # not self: the channel would hold the stream in a cycle

        def deliver(item: Any) -> None:
            if item is not DONE:
                sink(item)
                return
            try:
                finish()
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                end(exc)
            else:
                end(None)

        self._channel.redirect(deliver)
