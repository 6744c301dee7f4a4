"""A replica's streams to one ingress, multiplexed over one Ray call: what a decode step produced for every
stream crosses as one item, not one per stream.

Each streamed item costs CPU in both processes whatever it carries (Serve's bookkeeping, gRPC, a task
wake-up), and a step of 8 streams made 8 of them.  The ingress opens one ``channel`` call to each replica it
has streams on (pinned to it); the replica answers a stream's request with its first burst marked
:data:`MUXED` and puts the stream's later bursts on that ingress's channel, which sends every
``(stream id, burst)`` it has ready at once as one item.  The request's own call stays open until the stream
ends, so Serve still counts it (routing, autoscaling), and cancelling it still cancels the request in the
replica; its errors still travel on it.  A request that comes before its ingress's channel is open streams
on its own call, as without a channel.

A channel with no stream on it closes after :data:`IDLE_S`, so a replica being stopped does not wait for it
(the ingress opens another at its next stream).  While open it is one more ongoing request on its replica.
"""
from __future__ import annotations

import asyncio
import contextvars
import pickle
import uuid
from typing import Any, AsyncIterator, Callable

#: a message in a stream's first burst: its later bursts come on the channel
MUXED = "corert.muxed"
#: a channel with no stream on it for this long closes
IDLE_S = 30.0


class Outbox:
    """The replica's side of one ingress's channel."""

    def __init__(self):
        self._items: list[tuple[str, Any]] = []
        self._ready = asyncio.Event()
        self.streams = 0  # streams on this channel that have not ended

    def put(self, stream: str, burst: Any) -> None:
        """``burst``: a stream's next messages, or None: it ended."""
        self._items.append((stream, burst))
        self._ready.set()

    async def batches(self, idle_s: float, close: Callable[[], bool]) -> AsyncIterator[bytes]:
        """Everything put since the last batch, pickled; ends once ``close()`` agrees after ``idle_s`` of
        nothing put."""
        while True:
            try:
                await asyncio.wait_for(self._ready.wait(), idle_s)
            except asyncio.TimeoutError:
                if not self._items:  # the timeout can fire in the turn a stream put its last bursts and ended
                    if close():
                        return
                    continue
            await asyncio.sleep(0)  # one loop turn: the step's other streams put theirs too
            self._ready.clear()
            items, self._items = self._items, []
            yield pickle.dumps(items)


class ReplicaChannels:
    """The channels of a replica, by ingress."""

    def __init__(self, idle_s: float = IDLE_S):
        self.idle_s = idle_s
        self._open: dict[str, Outbox] = {}

    async def serve(self, channel: str) -> AsyncIterator[bytes]:
        """The ingress ``channel``'s batches until it is idle (or the ingress cancels the call)."""
        box = self._open[channel] = Outbox()

        def close() -> bool:  # no await between the check and the removal: no stream joins a closing box
            if box.streams or self._open.get(channel) is not box:
                return False
            del self._open[channel]
            return True

        try:
            async for batch in box.batches(self.idle_s, close):
                yield batch
        finally:
            if self._open.get(channel) is box:
                del self._open[channel]

    async def relay(self, channel: str | None, stream: str, first: list[dict[str, Any]],
                    rest: AsyncIterator[list[dict[str, Any]]]) -> AsyncIterator[list[dict[str, Any]]]:
        """What a stream's own call yields: ``first``, and the later bursts too unless its ingress's channel
        is open, which then carries them (``first`` goes with a :data:`MUXED` message)."""
        box = self._open.get(channel) if channel else None
        if box is None:
            yield first
            async for burst in rest:
                yield burst
            return
        box.streams += 1
        try:
            yield [*first, {"type": MUXED}]
            async for burst in rest:
                box.put(stream, burst)
            box.put(stream, None)  # a clean end only: an error is raised on the call, as it would be unmuxed
        finally:
            box.streams -= 1


class ChannelBroken(Exception):
    """A replica's channel broke (the replica died, most likely) before a stream on it ended."""


class IngressChannels:
    """The ingress's side: one channel per replica, opened at the first stream that replica answers on its
    own call; each stream's queue registered before its request is sent (its bursts may come before its
    call's first item is read)."""

    def __init__(self, open_call: Callable[[str, str], AsyncIterator[bytes]]):
        """``open_call(replica_id, channel_id)``: the channel's streaming call."""
        self.id = uuid.uuid4().hex
        self._open_call = open_call
        self._readers: dict[str, asyncio.Task] = {}
        self.items = self.bursts = 0  # received on channels: items, and the stream bursts they carried
        self._queues: dict[str, asyncio.Queue] = {}
        self._replica_of: dict[str, str] = {}

    def register(self) -> tuple[str, asyncio.Queue]:
        stream = uuid.uuid4().hex
        queue = self._queues[stream] = asyncio.Queue()
        return stream, queue

    def on_replica(self, stream: str, replica: str) -> None:
        """``stream`` is served by ``replica``: a channel to it is opened if none is."""
        if stream in self._queues:
            self._replica_of[stream] = replica
        if replica and replica not in self._readers:
            # in a context of its own: opened while serving a request, it would be that request's child call,
            # which Serve cancels when the request ends
            self._readers[replica] = asyncio.get_running_loop().create_task(self._read(replica),
                                                                             context=contextvars.Context())

    def unregister(self, stream: str) -> None:
        self._queues.pop(stream, None)
        self._replica_of.pop(stream, None)

    async def _read(self, replica: str) -> None:
        try:
            async for raw in self._open_call(replica, self.id):
                batch = pickle.loads(raw)  # our own replica's bytes
                self.items += 1
                self.bursts += len(batch)
                for stream, burst in batch:
                    queue = self._queues.get(stream)
                    if queue is not None:
                        queue.put_nowait(burst)
        finally:  # however it ended, no stream waits for it (the replica closes it only with none on it)
            if self._readers.get(replica) is asyncio.current_task():
                del self._readers[replica]
            for stream, on in list(self._replica_of.items()):
                if on == replica:
                    self._queues[stream].put_nowait(ChannelBroken())

    def close(self) -> None:
        for task in self._readers.values():
            task.cancel()


async def muxed_bursts(queue: asyncio.Queue, own_call: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A muxed stream's later bursts from its channel queue until its end; an error of its own call (the
    replica's app raised, or the replica died) is raised here."""
    async def watch() -> None:
        try:
            async for _ in own_call:
                pass
        except Exception as exc:  # noqa: BLE001 - raised by the reader
            queue.put_nowait(exc)

    watcher = asyncio.ensure_future(watch())
    try:
        while (burst := await queue.get()) is not None:
            if isinstance(burst, BaseException):
                raise burst
            yield burst
    finally:
        watcher.cancel()
