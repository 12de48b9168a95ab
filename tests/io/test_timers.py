"""The lazy deadline: moved by assignment, fires once, at (not before) the latest deadline."""

from __future__ import annotations

import asyncio

from meshgate.io.timers import Deadline


async def _fired_after(setup, wait_s: float) -> list[float]:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    deadline = Deadline(loop, lambda: fired.append(loop.time()))
    start = loop.time()
    setup(deadline)
    await asyncio.sleep(wait_s)
    deadline.cancel()
    return [t - start for t in fired]


async def test_fires_once_after_the_delay():
    fired = await _fired_after(lambda d: d.set(0.05), 0.3)
    assert len(fired) == 1 and fired[0] >= 0.05


async def test_moving_it_later_postpones_the_call():
    fired = await _fired_after(lambda d: (d.set(0.05), d.set(0.2)), 0.4)
    assert len(fired) == 1 and fired[0] >= 0.2


async def test_moving_it_earlier_brings_the_call_forward():
    fired = await _fired_after(lambda d: (d.set(5.0), d.set(0.05)), 0.3)
    assert len(fired) == 1 and fired[0] < 5.0


async def test_clear_and_cancel_mean_no_call():
    assert await _fired_after(lambda d: (d.set(0.05), d.clear()), 0.2) == []
    assert await _fired_after(lambda d: (d.set(0.05), d.cancel()), 0.2) == []
