"""saq: one asyncio worker process, N jobs at a time, one aiohttp session."""

from __future__ import annotations

import asyncio
from typing import Any

from saq import Queue

from bench.peers import CONCURRENCY as JOBS
from bench.peers import HEADERS, REDIS_URL, SINK_URL, run_load

GUARANTEE = ("at-least-once within its retries: a job stays active until done; a stuck one is "
             "swept and retried after its timeout")
CONCURRENCY = "concurrency=N: jobs run at once by one asyncio worker"

queue = Queue.from_url(REDIS_URL)


async def startup(ctx: dict[str, Any]) -> None:
    import aiohttp

    ctx["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=JOBS))


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["session"].close()


async def post(ctx: dict[str, Any], *, body: str) -> None:
    async with ctx["session"].post(SINK_URL, data=body.encode(), headers=HEADERS) as response:
        response.raise_for_status()
        await response.read()


settings = {"queue": queue, "functions": [post], "concurrency": JOBS,
            "startup": startup, "shutdown": shutdown}


def load(redis_url: str, count: int) -> None:
    from bench.bodies import body

    async def go() -> None:
        sender = Queue.from_url(redis_url)
        await sender.connect()
        for start in range(0, count, 200):
            await asyncio.gather(*(sender.enqueue("post", body=body(n).decode())
                                   for n in range(start, min(start + 200, count))))
        await sender.disconnect()

    asyncio.run(go())


def worker(python: str, concurrency: int) -> list[str]:
    return [python, "-m", "saq", "bench.peers.saq_peer.settings", "--workers", "1"]


if __name__ == "__main__":
    run_load(load)
