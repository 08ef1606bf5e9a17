"""The chosen client's own ceiling: a bare pyreqwest loop POSTing the bodies from memory, no Redis."""

from __future__ import annotations

import asyncio
import sys

GUARANTEE = "none: nothing is stored, so nothing survives a crash"
CONCURRENCY = "coroutines sharing one pyreqwest client (a connection each)"


async def post_all(url: str, count: int, concurrency: int) -> None:
    from pyreqwest.client import ClientBuilder

    from bench.bodies import body

    pending = iter(range(count))
    client = ClientBuilder().max_connections(concurrency).error_for_status(True).build()

    async def loop() -> None:
        for number in pending:
            request = client.post(url).header("Content-Type", "application/json").body_bytes(body(number))
            await (await request.build().send()).bytes()

    async with client:
        await asyncio.gather(*(loop() for _ in range(concurrency)))


def load(redis_url: str, count: int) -> None:
    """Nothing to load: the bodies are made in the worker."""


def worker(python: str, concurrency: int) -> list[str]:
    return [python, "-m", "bench.peers.ceiling_pyreqwest", "work", str(concurrency)]


if __name__ == "__main__":
    if sys.argv[1] == "work":
        import os

        import uvloop

        count = int(os.environ["BENCH_COUNT"])
        uvloop.run(post_all(os.environ["BENCH_SINK_URL"], count, int(sys.argv[2])))
        asyncio.run(asyncio.sleep(3600))  # stay, so that the harness reads its RSS like the others'
