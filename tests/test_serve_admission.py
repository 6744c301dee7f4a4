"""The server's admission (sequence slots, a bounded line, 429 beyond it) on its own: plain asyncio, no
model."""
from __future__ import annotations

import asyncio

import pytest

from corert.server.admission import Admission
from corert.server.errors import APIError


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


def test_slots_then_line_in_arrival_order_then_429():
    async def scenario():
        adm = Admission(slots=2, max_queue=2)
        order, release = [], asyncio.Event()

        async def request(name, n=1):
            async with adm.hold(n):
                order.append(name)
                await release.wait()

        running = [asyncio.create_task(request(x)) for x in ("a", "b", "c", "d")]
        await asyncio.sleep(0.01)
        assert (adm.active, adm.waiting, order) == (2, 2, ["a", "b"])
        with pytest.raises(APIError) as err:
            async with adm.hold(1):
                pass
        assert err.value.status == 429 and err.value.code == "queue_full"
        release.set()
        await asyncio.gather(*running)
        assert order == ["a", "b", "c", "d"] and (adm.active, adm.waiting) == (0, 0)

    run(scenario())


def test_a_cancelled_waiter_leaves_the_line_and_a_wide_request_takes_all_slots():
    async def scenario():
        adm = Admission(slots=2, max_queue=4)
        hold = asyncio.Event()

        async def request(n):
            async with adm.hold(n):
                await hold.wait()

        first = asyncio.create_task(request(8))  # n > slots: holds every slot, not more
        await asyncio.sleep(0.01)
        assert adm.active == 2
        waiter = asyncio.create_task(request(1))
        await asyncio.sleep(0.01)
        assert adm.waiting == 1
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert adm.waiting == 0
        hold.set()
        await first
        assert adm.active == 0

    run(scenario())
