"""taskiq with taskiq-redis's RedisStreamBroker: one worker process, N tasks at a time."""

from __future__ import annotations

import asyncio
from typing import Any

from taskiq_redis import RedisStreamBroker

from bench.peers import HEADERS, REDIS_URL, SINK_URL, run_load

GUARANTEE = ("at-least-once: a stream entry is acknowledged once the task ran (ack when saved); "
             "an unacknowledged one is claimed again after its idle timeout")
CONCURRENCY = "--workers 1 --max-async-tasks N: one worker process (and its supervisor)"

broker = RedisStreamBroker(REDIS_URL)
_session: Any = None


@broker.task(task_name="post")
async def post(body: str) -> None:
    global _session
    if _session is None:
        import aiohttp

        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    async with _session.post(SINK_URL, data=body.encode(), headers=HEADERS) as response:
        response.raise_for_status()
        await response.read()


def load(redis_url: str, count: int) -> None:
    from bench.bodies import body

    async def go() -> None:
        await broker.startup()
        for start in range(0, count, 200):
            await asyncio.gather(*(post.kiq(body(n).decode())
                                   for n in range(start, min(start + 200, count))))
        await broker.shutdown()

    asyncio.run(go())


def worker(python: str, concurrency: int) -> list[str]:
    return [python, "-m", "taskiq", "worker", "bench.peers.taskiq_peer:broker", "--workers", "1",
            "--max-async-tasks", str(concurrency), "--log-level", "WARNING"]


if __name__ == "__main__":
    run_load(load)
