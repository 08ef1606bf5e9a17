"""RQ: a SimpleWorker (no fork per job) in one process; RQ runs one job at a time per process."""

from __future__ import annotations

import sys

from bench.peers import post_from_thread, run_load

GUARANTEE = ("a job is popped, then put in the started registry; a killed worker's job is marked "
             "failed (abandoned), not run again unless a Retry is set")
CONCURRENCY = "none in a process: one job at a time (concurrency means more worker processes)"


def post(body: str) -> None:
    post_from_thread(body)


def load(redis_url: str, count: int) -> None:
    from redis import Redis
    from rq import Queue

    from bench.bodies import body

    queue = Queue("default", connection=Redis.from_url(redis_url))
    for start in range(0, count, 1000):
        jobs = [Queue.prepare_data(post, args=(body(n).decode(),), result_ttl=0)
                for n in range(start, min(start + 1000, count))]
        queue.enqueue_many(jobs)


def worker(python: str, concurrency: int) -> list[str]:
    return [python, "-m", "bench.peers.rq_peer", "work"]


def work() -> None:
    """`rq worker` on BENCH_REDIS_URL (known only in the worker's environment)."""
    import os

    from rq.cli import main

    sys.argv = ["rq", "worker", "--url", os.environ["BENCH_REDIS_URL"], "--worker-class",
                "rq.worker.SimpleWorker", "--quiet", "default"]
    main()


if __name__ == "__main__":  # its tasks registered under their module's real name, not __main__
    from bench.peers import rq_peer

    rq_peer.work() if sys.argv[1:] == ["work"] else run_load(rq_peer.load)
