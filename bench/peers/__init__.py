"""The systems `bench.delivery` compares, one module each, each run in its own processes.

A module here is imported by its own worker (a peer's CLI imports it to find the task),
so it reads its settings from the environment and imports nothing of ferry's unless it
is ferry: arq, whose redis-py cap is below ferry's, runs from a venv of its own.

Each module has GUARANTEE and CONCURRENCY (what the peer promises, what its concurrency
means), `load(redis_url, count)` (run as `python -m bench.peers.<name> load URL COUNT`
with the peer's own client) and `worker(python, concurrency) -> argv`.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

SINK_URL = os.environ.get("BENCH_SINK_URL", "http://127.0.0.1:9/webhook")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "16"))
HEADERS = {"Content-Type": "application/json"}

_local = threading.local()


def post_from_thread(body: str) -> None:
    """The threaded peers' task: one pooled requests.Session per worker thread."""
    import requests

    session: Any = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    response = session.post(SINK_URL, data=body.encode(), headers=HEADERS, timeout=30)
    response.raise_for_status()


def run_load(load: Any) -> None:
    """`python -m bench.peers.<name> load URL COUNT`."""
    if len(sys.argv) != 4 or sys.argv[1] != "load":
        raise SystemExit(f"usage: {sys.argv[0]} load REDIS_URL COUNT")
    load(sys.argv[2], int(sys.argv[3]))
