"""ferry: `ferry worker`, its messages queued as the proxy queues them."""

from __future__ import annotations

from pathlib import Path

GUARANTEE = ("at-least-once, acknowledged after the main server's 2xx; leases, retries with "
             "backoff, dead letters, statuses")
CONCURRENCY = "WORKER_CONCURRENCY: deliveries in flight in one asyncio process"


def load(redis_url: str, count: int) -> None:
    from bench.bodies import body
    from tests.support.inspect import enqueue

    for start in range(0, count, 5000):
        enqueue(redis_url, [body(n) for n in range(start, min(start + 5000, count))])


def worker(python: str, concurrency: int) -> list[str]:
    return [str(Path(python).parent / "ferry"), "worker"]


def env(redis_url: str, sink_url: str, concurrency: int) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "MAIN_SERVER_URL": sink_url,
        "WORKER_CONCURRENCY": str(concurrency),
        "WORKER_METRICS_PORT": "0",
        "LOG_LEVEL": "WARNING",
    }


if __name__ == "__main__":
    from bench.peers import run_load

    run_load(load)
