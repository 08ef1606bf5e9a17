"""ferry on its fallback client: `ferry worker` with FERRY_HTTP_CLIENT=aiohttp."""

from __future__ import annotations

from bench.peers import ferry_worker

GUARANTEE = "as ferry's (the client changes nothing of the guarantees)"
CONCURRENCY = "WORKER_CONCURRENCY: deliveries in flight in one asyncio process"
load = ferry_worker.load
worker = ferry_worker.worker


def env(redis_url: str, sink_url: str, concurrency: int) -> dict[str, str]:
    return {**ferry_worker.env(redis_url, sink_url, concurrency), "FERRY_HTTP_CLIENT": "aiohttp"}


if __name__ == "__main__":
    from bench.peers import run_load

    run_load(load)
