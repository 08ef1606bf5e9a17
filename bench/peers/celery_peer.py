"""Celery 5 on its Redis transport: a threads pool, a requests.Session per thread."""

from __future__ import annotations

from celery import Celery

from bench.peers import REDIS_URL, post_from_thread, run_load

GUARANTEE = ("at-most-once by default: acks_late is off, so a task is acknowledged when the worker "
             "takes it, before it runs; a worker killed mid-task loses it")
CONCURRENCY = "--pool threads -c N: N threads in one process (prefetch 4 x N)"

app = Celery("bench", broker=REDIS_URL)
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False,
                broker_connection_retry_on_startup=True)


@app.task(name="post")
def post(body: str) -> None:
    post_from_thread(body)


def load(redis_url: str, count: int) -> None:
    from bench.bodies import body

    with app.producer_or_acquire() as producer:
        for number in range(count):
            post.apply_async(args=[body(number).decode()], producer=producer)


def worker(python: str, concurrency: int) -> list[str]:
    return [python, "-m", "celery", "-A", "bench.peers.celery_peer", "worker", "--pool", "threads",
            "-c", str(concurrency), "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
            "--without-heartbeat"]


if __name__ == "__main__":
    run_load(load)
