"""The chosen client's own ceiling: a bare pyreqwest loop POSTing the bodies from memory, no Redis.

`paced RATE COUNT` POSTs them one at a time on a clock instead (the cost kind's light loads):
what the client alone costs a message when each comes alone, as a worker's do at that rate.
"""

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


async def post_paced(url: str, rate: float, count: int) -> None:
    """Each body sent when its time on the clock comes (a late one at once), its answer awaited."""
    from pyreqwest.client import ClientBuilder

    from bench.bodies import body

    loop = asyncio.get_running_loop()
    async with ClientBuilder().error_for_status(True).build() as client:
        start = loop.time()
        for number in range(count):
            delay = start + number / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            request = client.post(url).header("Content-Type", "application/json").body_bytes(body(number))
            await (await request.build().send()).bytes()


def load(redis_url: str, count: int) -> None:
    """Nothing to load: the bodies are made in the worker."""


def worker(python: str, concurrency: int) -> list[str]:
    return [python, "-m", "bench.peers.ceiling_pyreqwest", "work", str(concurrency)]


if __name__ == "__main__":
    import os

    import uvloop

    if sys.argv[1] in ("work", "paced"):
        url = os.environ["BENCH_SINK_URL"]
        if sys.argv[1] == "work":
            uvloop.run(post_all(url, int(os.environ["BENCH_COUNT"]), int(sys.argv[2])))
        else:
            uvloop.run(post_paced(url, float(sys.argv[2]), int(sys.argv[3])))
        asyncio.run(asyncio.sleep(3600))  # stay, so that the harness reads its RSS and CPU like the others'
