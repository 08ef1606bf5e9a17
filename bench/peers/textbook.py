"""The textbook reliable consumer: BLMOVE to a processing list, POST, LREM; no more."""

from __future__ import annotations

import asyncio
import os
import sys

GUARANTEE = "at-least-once: a message stays in the processing list until its POST succeeded"
CONCURRENCY = "coroutines, each BLMOVE -> POST -> LREM, one aiohttp session"
QUEUE, PROCESSING = "textbook:queue", "textbook:processing"


def load(redis_url: str, count: int) -> None:
    import redis

    from bench.bodies import body

    client = redis.Redis.from_url(redis_url)
    for start in range(0, count, 1000):
        client.lpush(QUEUE, *(body(n) for n in range(start, min(start + 1000, count))))


async def consume(redis_url: str, sink_url: str, concurrency: int) -> None:
    import aiohttp
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, max_connections=concurrency + 2)

    async def loop(session: aiohttp.ClientSession) -> None:
        while True:
            message = await client.blmove(QUEUE, PROCESSING, 1, "RIGHT", "LEFT")
            if message is None:
                continue
            async with session.post(sink_url, data=message, headers={"Content-Type": "application/json"}) as r:
                r.raise_for_status()
                await r.read()
            await client.lrem(PROCESSING, 1, message)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(loop(session) for _ in range(concurrency)))


def worker(python: str, concurrency: int) -> list[str]:
    return [python, "-m", "bench.peers.textbook", "work", str(concurrency)]


if __name__ == "__main__":
    if sys.argv[1] == "work":
        import uvloop

        uvloop.run(consume(os.environ["BENCH_REDIS_URL"], os.environ["BENCH_SINK_URL"], int(sys.argv[2])))
    else:
        from bench.peers import run_load

        run_load(load)
