"""Runtime.stream's push mode (what `corert serve` uses instead of a thread per stream): the same chunks as
iterating, in order, handed over on the producer's thread, the end reported once with the request's hooks
ended; and the channel's hand-over from queue to sink loses or reorders nothing."""
from __future__ import annotations

import threading

import pytest

from corert.chunk_stream import Channel


def test_redirect_keeps_order_while_a_producer_puts():
    channel = Channel()
    got: list[int] = []
    n = 20_000
    started = threading.Event()

    def produce():
        for i in range(n):
            channel.put(i)
            if i == 100:
                started.set()

    t = threading.Thread(target=produce)
    t.start()
    assert started.wait(10)
    channel.redirect(got.append)  # mid-stream: the queued items first, then the rest straight to the sink
    t.join(10)
    assert got == list(range(n))


def _push(stream, timeout: float = 60.0):
    chunks, ends, threads = [], [], set()
    done = threading.Event()

    def sink(chunk):
        threads.add(threading.get_ident())
        chunks.append(chunk)

    def end(exc):
        ends.append(exc)
        done.set()

    stream.push_to(sink, end)
    assert done.wait(timeout)
    return chunks, ends, threads


def test_pushed_chunks_equal_iterated_ones(runtime):
    kw = dict(max_tokens=8, temperature=0.0)
    iterated = list(runtime.stream("The capital of France is", **kw))
    chunks, ends, threads = _push(runtime.stream("The capital of France is", **kw))
    assert ends == [None]
    assert [c.text for c in chunks] == [c.text for c in iterated]
    assert chunks[-1].completion.token_ids == iterated[-1].completion.token_ids
    assert threading.get_ident() not in threads  # handed over by the producer, not this thread


def test_push_reports_the_request_error(runtime):
    too_long = "word " * (runtime.load_generation_model()[0].n_ctx + 10)
    stream = runtime.stream(too_long, max_tokens=4)
    chunks, ends, _ = _push(stream)
    assert chunks == [] and len(ends) == 1
    with pytest.raises(type(ends[0])):
        raise ends[0]
    assert "context" in str(ends[0])


def test_the_servers_loop_inbox_does_not_keep_a_finished_loop_alive():
    import asyncio
    import gc
    import weakref

    from corert.server.streams import _inbox

    async def take_inbox():
        _inbox(asyncio.get_running_loop())

    loop = asyncio.new_event_loop()
    loop.run_until_complete(take_inbox())
    loop.close()
    ref = weakref.ref(loop)
    del loop
    gc.collect()
    assert ref() is None
