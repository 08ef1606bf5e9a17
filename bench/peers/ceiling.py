"""The ceiling: a bare aiohttp loop POSTing the bodies from memory, no Redis, no bookkeeping."""

from __future__ import annotations

import asyncio
import sys

GUARANTEE = "none: nothing is stored, so nothing survives a crash"
CONCURRENCY = "coroutines sharing one aiohttp session (a connection each)"


async def post_all(url: str, count: int, concurrency: int) -> None:
    import aiohttp

    from bench.bodies import body

    pending = iter(range(count))

    async def loop(session: aiohttp.ClientSession) -> None:
        for number in pending:
            async with session.post(url, data=body(number), headers={"Content-Type": "application/json"}) as r:
                r.raise_for_status()
                await r.read()

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(loop(session) for _ in range(concurrency)))


def load(redis_url: str, count: int) -> None:
    """Nothing to load: the bodies are made in the worker."""


def worker(python: str, concurrency: int) -> list[str]:
    return [python, "-m", "bench.peers.ceiling", "work", str(concurrency)]


if __name__ == "__main__":
    if sys.argv[1] == "work":
        import os

        import uvloop

        count = int(os.environ["BENCH_COUNT"])
        uvloop.run(post_all(os.environ["BENCH_SINK_URL"], count, int(sys.argv[2])))
        asyncio.run(asyncio.sleep(3600))  # stay, so that the harness reads its RSS like the others'
