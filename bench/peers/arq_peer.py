"""arq: one asyncio worker, max_jobs N, one aiohttp session (run from its own venv: see below).

arq caps redis-py below 6 and ferry needs 7, so arq cannot share ferry's venv: `python -m
bench` runs it with BENCH_ARQ_PYTHON (default /tmp/venv-arq/bin/python, made by
`python3 -m venv /tmp/venv-arq && /tmp/venv-arq/bin/pip install -r bench/arq-requirements.txt`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings

from bench.peers import CONCURRENCY as JOBS
from bench.peers import HEADERS, REDIS_URL, SINK_URL, run_load

GUARANTEE = ("at-least-once ('pessimistic execution'): a job stays queued while it runs and is "
             "run again if its worker dies")
CONCURRENCY = "max_jobs=N: jobs at once in one asyncio worker"


async def startup(ctx: dict[str, Any]) -> None:
    import aiohttp

    ctx["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=JOBS))


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["session"].close()


async def post(ctx: dict[str, Any], body: str) -> None:
    async with ctx["session"].post(SINK_URL, data=body.encode(), headers=HEADERS) as response:
        response.raise_for_status()
        await response.read()


class WorkerSettings:
    functions = [post]
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    max_jobs = JOBS
    keep_result = 0
    on_startup = startup
    on_shutdown = shutdown


def load(redis_url: str, count: int) -> None:
    from bench.bodies import body

    async def go() -> None:
        pool = await create_pool(RedisSettings.from_dsn(redis_url))
        for start in range(0, count, 200):
            await asyncio.gather(*(pool.enqueue_job("post", body(n).decode())
                                   for n in range(start, min(start + 200, count))))
        await pool.aclose()

    asyncio.run(go())


def worker(python: str, concurrency: int) -> list[str]:
    from pathlib import Path

    return [str(Path(python).parent / "arq"), "bench.peers.arq_peer.WorkerSettings"]


if __name__ == "__main__":
    run_load(load)
