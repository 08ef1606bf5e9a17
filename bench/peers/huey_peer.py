"""huey: RedisHuey, a consumer of N threads, a requests.Session per thread."""

from __future__ import annotations

from huey import RedisHuey

from bench.peers import REDIS_URL, post_from_thread, run_load

GUARANTEE = ("at-most-once: a task is popped (removed) before it runs; a worker killed mid-task "
             "loses it")
CONCURRENCY = "-k thread -w N: N consumer threads, each polling Redis"

huey = RedisHuey("bench", url=REDIS_URL, results=False)


@huey.task()
def post(body: str) -> None:
    post_from_thread(body)


def load(redis_url: str, count: int) -> None:
    from bench.bodies import body

    for number in range(count):
        post(body(number).decode())


def worker(python: str, concurrency: int) -> list[str]:
    return [python, "-m", "huey.bin.huey_consumer", "bench.peers.huey_peer.huey", "-k", "thread",
            "-w", str(concurrency), "-q"]


if __name__ == "__main__":  # its tasks registered under their module's real name, not __main__
    from bench.peers import huey_peer

    run_load(huey_peer.load)
