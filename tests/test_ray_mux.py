"""The channel of ray_mux without Ray between its two ends (the Serve integration is in test_serve_ray.py): a
replica's streams batched into one item per loop turn, read back per stream in order; a channel closes when
idle only with no stream on it; a stream learns of its call's error and of its channel breaking."""
from __future__ import annotations

import asyncio
import pickle

import pytest

from corert.server import ray_mux
from corert.server.ray_mux import MUXED, ChannelBroken, IngressChannels, ReplicaChannels, muxed_bursts

WAIT = 60.0  # a bound for what must happen (in well under a second): never reached when things work


def _burst(text: str) -> list[dict]:
    return [{"type": "http.response.body", "body": text.encode(), "more_body": True}]


async def _produce(texts: list[str], gap_s: float = 0.0, fail: bool = False):
    for t in texts:
        await asyncio.sleep(gap_s)
        yield _burst(t)
    if fail:
        raise ValueError("the app failed")


async def _call(channels: ReplicaChannels, channel: str | None, stream: str, texts: list[str], **kw) -> list:
    """A stream's own call, as the ingress reads it."""
    return [b async for b in channels.relay(channel, stream, _burst("start"), _produce(texts, **kw))]


async def _open_channel() -> tuple[ReplicaChannels, IngressChannels]:
    """A replica and an ingress whose channel to it is open (as at the replica's first stream)."""
    replica = ReplicaChannels()

    async def open_call(replica_id: str, channel: str):
        async for raw in replica.serve(channel):
            yield raw

    ingress = IngressChannels(open_call)
    ingress.on_replica("warm", "r1")
    await asyncio.sleep(0.01)
    return replica, ingress


def test_streams_share_items_and_each_reads_its_own_in_order():
    async def main():
        replica, ingress = await _open_channel()
        streams = [ingress.register() for _ in range(3)]
        words = [[f"s{i}w{k} " for k in range(5)] for i in range(3)]
        calls = [asyncio.ensure_future(_call(replica, ingress.id, sid, w)) for (sid, _), w in zip(streams, words)]
        for sid, _ in streams:
            ingress.on_replica(sid, "r1")
        own = await asyncio.gather(*calls)
        assert all(len(o) == 1 and o[0][-1] == {"type": MUXED} for o in own)  # only the marked first burst
        got = []
        for (sid, queue), o in zip(streams, own):

            async def nothing():
                return
                yield

            got.append("".join([b[0]["body"].decode() async for b in muxed_bursts(queue, nothing())]))
        assert got == ["".join(w) for w in words]
        assert ingress.bursts == 3 * 6 and ingress.items <= 6  # three streams' bursts shared the items
        ingress.close()

    asyncio.run(main())


def test_without_an_open_channel_a_stream_stays_on_its_call():
    async def main():
        replica = ReplicaChannels()
        own = await _call(replica, "nobody", "s", ["a", "b"])
        assert [b[0]["body"] for b in own] == [b"start", b"a", b"b"]

    asyncio.run(main())


def test_an_idle_channel_closes_but_not_under_a_stream():
    async def main():
        replica = ReplicaChannels(idle_s=0.05)
        items = []

        async def read():
            async for raw in replica.serve("c"):
                items.append(pickle.loads(raw))

        reader = asyncio.ensure_future(read())
        await asyncio.sleep(0)  # the channel is open
        relay = replica.relay("c", "s", _burst("start"), _produce(["late"], gap_s=0.3))  # silent for 6 periods
        assert (await anext(relay))[-1] == {"type": MUXED}  # no await before it joined: no idle close yet

        async def rest():
            return [b async for b in relay]

        call = asyncio.ensure_future(rest())
        await asyncio.wait_for(reader, WAIT)  # it closed, but only after the stream ended
        assert call.done() and [x for batch in items for x in batch] == [("s", _burst("late")), ("s", None)]
        assert (await _call(replica, "c", "t", ["x"]))[0][-1] != {"type": MUXED}  # closed: on its own call

    asyncio.run(main())


def test_bursts_put_as_the_idle_timeout_fires_are_sent_before_the_channel_closes(monkeypatch):
    """The race behind a once-failed run of the test above: the idle wait timed out in the very turn the
    stream put its last bursts and ended, and the channel closed without sending them."""
    real_wait_for = asyncio.wait_for
    box = ray_mux.Outbox()
    timeouts = []

    async def times_out_as_the_stream_ends(awaitable, timeout):
        if timeouts:
            return await real_wait_for(awaitable, timeout)
        timeouts.append(timeout)
        awaitable.close()
        box.put("s", _burst("last"))
        box.put("s", None)  # the stream ended: no stream holds the channel open now
        raise asyncio.TimeoutError

    monkeypatch.setattr(ray_mux.asyncio, "wait_for", times_out_as_the_stream_ends)

    async def main():
        return [pickle.loads(b) async for b in box.batches(0.01, close=lambda: True)]

    assert asyncio.run(main()) == [[("s", _burst("last")), ("s", None)]]
    assert timeouts == [0.01]


def test_a_calls_error_and_a_broken_channel_reach_the_stream():
    async def main():
        replica = ReplicaChannels()
        channel_up = asyncio.Event()

        async def open_call(replica_id: str, channel: str):
            channel_up.set()
            async for raw in replica.serve(channel):
                yield raw
                raise ConnectionError("the replica died")  # the channel breaks after its first item

        ingress = IngressChannels(open_call)
        ingress.on_replica("warm", "r1")
        await channel_up.wait()
        sid, queue = ingress.register()
        ingress.on_replica(sid, "r1")
        with pytest.raises(ValueError, match="the app failed"):  # the call raised: so does the stream
            await _call(replica, ingress.id, sid, [], fail=True)

        async def failing():
            raise ValueError("the app failed")
            yield

        with pytest.raises(ValueError):
            [b async for b in muxed_bursts(asyncio.Queue(), failing())]
        sid2, queue2 = ingress.register()
        ingress.on_replica(sid2, "r1")
        call = asyncio.ensure_future(_call(replica, ingress.id, sid2, ["a", "b", "c"], gap_s=0.01))

        async def waiting():
            await asyncio.sleep(10)
            return
            yield

        with pytest.raises(ChannelBroken):
            [b async for b in muxed_bursts(queue2, waiting())]
        call.cancel()

    asyncio.run(main())


def test_a_channel_cancelled_under_a_stream_ends_it():
    """However a channel's reader ends (here: cancelled, as Serve cancels a request's child calls), a stream
    waiting on it gets ChannelBroken, not a wait without end."""
    async def main():
        replica, ingress = await _open_channel()
        sid, queue = ingress.register()
        ingress.on_replica(sid, "r1")
        call = asyncio.ensure_future(_call(replica, ingress.id, sid, ["a", "b"], gap_s=0.05))
        await asyncio.sleep(0.01)
        ingress.close()  # the reader is cancelled while the stream still has bursts to come

        async def waiting():
            await asyncio.sleep(10)
            return
            yield

        with pytest.raises(ChannelBroken):
            await asyncio.wait_for(asyncio.ensure_future(_drain(muxed_bursts(queue, waiting()))), WAIT)
        call.cancel()

    async def _drain(bursts):
        return [b async for b in bursts]

    asyncio.run(main())
