"""The coalescer: concurrent requests share one call, and each caller gets its own answer."""

from __future__ import annotations

import asyncio

import pytest

from ferry.queue.batching import Coalescer


async def test_concurrent_submits_share_one_call_and_keep_their_order() -> None:
    calls: list[list[int]] = []

    async def send(items: list[int]) -> list[int]:
        calls.append(items)
        await asyncio.sleep(0.01)
        return [item * 10 for item in items]

    coalescer: Coalescer[int, int] = Coalescer(send)
    results = await asyncio.gather(*(coalescer.submit(n) for n in range(50)))
    assert results == [n * 10 for n in range(50)]
    # The first caller goes out alone; everything that came meanwhile goes in one call.
    assert len(calls) <= 2 and sorted(sum(calls, [])) == list(range(50))


async def test_batches_are_capped() -> None:
    sizes: list[int] = []

    async def send(items: list[int]) -> list[None]:
        sizes.append(len(items))
        return [None] * len(items)

    coalescer: Coalescer[int, None] = Coalescer(send, max_batch=7)
    await asyncio.gather(*(coalescer.submit(n) for n in range(30)))
    assert max(sizes) == 7 and sum(sizes) == 30


async def test_a_failed_call_fails_each_of_its_callers_and_the_next_call_works() -> None:
    failing = True

    async def send(items: list[int]) -> list[int]:
        if failing:
            raise ConnectionError("redis away")
        return items

    coalescer: Coalescer[int, int] = Coalescer(send)
    outcomes = await asyncio.gather(*(coalescer.submit(n) for n in range(5)), return_exceptions=True)
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)
    failing = False
    assert await coalescer.submit(9) == 9


async def test_a_cancelled_caller_does_not_stall_the_others() -> None:
    release = asyncio.Event()

    async def send(items: list[int]) -> list[int]:
        await release.wait()
        return items

    coalescer: Coalescer[int, int] = Coalescer(send)
    first = asyncio.create_task(coalescer.submit(1))
    await asyncio.sleep(0)
    second = asyncio.create_task(coalescer.submit(2))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await asyncio.wait_for(second, 1) == 2
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_an_exception_among_the_results_is_raised_to_its_own_caller_alone() -> None:
    async def send(items: list[int]) -> list[int | Exception]:
        await asyncio.sleep(0.01)
        return [ValueError(f"partition of {item} away") if item % 3 == 1 else item for item in items]

    coalescer: Coalescer[int, int] = Coalescer(send)
    results = await asyncio.gather(*(coalescer.submit(n) for n in range(9)), return_exceptions=True)
    assert [type(r).__name__ if isinstance(r, Exception) else r for r in results] == [
        0, "ValueError", 2, 3, "ValueError", 5, 6, "ValueError", 8
    ]
