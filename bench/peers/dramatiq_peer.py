"""Dramatiq on its Redis broker: one process of N threads, a requests.Session per thread."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.peers import REDIS_URL, post_from_thread, run_load

GUARANTEE = ("at-least-once: a message is acknowledged after the actor returns; a dead worker's "
             "messages are requeued once its heartbeat expires")
CONCURRENCY = "--processes 1 --threads N: N worker threads (prefetch per thread)"

broker = RedisBroker(url=REDIS_URL)
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0)
def post(body: str) -> None:
    post_from_thread(body)


def load(redis_url: str, count: int) -> None:
    from bench.bodies import body

    for number in range(count):
        post.send(body(number).decode())


def worker(python: str, concurrency: int) -> list[str]:
    return [python, "-m", "dramatiq", "bench.peers.dramatiq_peer", "--processes", "1",
            "--threads", str(concurrency)]


if __name__ == "__main__":
    run_load(load)
