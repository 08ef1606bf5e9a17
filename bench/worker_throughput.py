"""Delivery rate of one `ferry worker` process into `ferry sink`, against a baseline.

The baseline, measured in the same run against the same sink, is a bare aiohttp
client POSTing the same messages with the same concurrency and no Redis at all:
the ceiling for any worker on this machine. ferry's figure is reported as a
ratio to it, with the worker's resident memory.

    python bench/worker_throughput.py [--messages 20000] [--concurrency 4 16] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.inspect import enqueue  # noqa: E402
from tests.support.servers import RedisProcess, free_port  # noqa: E402

BODY = b'{"payload": "' + b"x" * 485 + b'"}'  # 500 bytes (docs/architecture.md)


def ferry(*args: str, env: dict[str, str] | None = None, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [shutil.which("ferry") or "ferry", *args],
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def sink_stats(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def wait_for_sink(port: int) -> None:
    for _ in range(200):
        try:
            sink_stats(port)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("sink did not start")


def rate_of(port: int, target: int, process: subprocess.Popen[bytes]) -> float:
    """Messages/s from the sink's first stored message to its `target`-th."""
    start_count, started = None, 0.0
    while True:
        received = sink_stats(port)["received"]
        now = time.perf_counter()
        if start_count is None and received > 0:
            start_count, started = received, now
        if received >= target:
            return (received - (start_count or 0)) / (now - started)
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        time.sleep(0.01)


def resident_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB: memory now, and its peak."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def one_run(workdir: Path, messages: int, concurrency: int) -> dict[str, float]:
    redis = RedisProcess("valkey", workdir / "valkey", appendfsync="everysec")
    redis.start()
    sink_port = free_port()
    sink = ferry("sink", "--port", str(sink_port), "--db", str(workdir / "sink.db"), log=workdir / "sink.log")
    try:
        wait_for_sink(sink_port)
        sink_url = f"http://127.0.0.1:{sink_port}/webhook"

        bare = subprocess.Popen(
            [sys.executable, __file__, "--bare-client", sink_url, str(messages), str(concurrency)]
        )
        bare_rate = rate_of(sink_port, messages, bare)
        bare.wait()

        enqueue(redis.url, [BODY] * messages)
        worker = ferry(
            "worker",
            env={
                "REDIS_URL": redis.url,
                "MAIN_SERVER_URL": sink_url,
                "WORKER_CONCURRENCY": str(concurrency),
                "WORKER_METRICS_PORT": "0",
                "LOG_LEVEL": "WARNING",
            },
            log=workdir / "worker.log",
        )
        worker_rate = rate_of(sink_port, 2 * messages, worker)
        rss, peak = resident_kib(worker.pid)
        worker.terminate()
        worker.wait(30)
        return {"bare": bare_rate, "worker": worker_rate, "rss_kib": rss, "peak_kib": peak}
    finally:
        sink.terminate()
        sink.wait(30)
        redis.kill()


async def bare_client(url: str, messages: int, concurrency: int) -> None:
    """The baseline: the same POSTs as a worker makes, straight from memory."""
    import aiohttp

    pending = iter(range(messages))

    async def post_all(session: aiohttp.ClientSession) -> None:
        for _ in pending:
            message_id = str(uuid.uuid4())
            headers = {"Content-Type": "application/json", "X-Message-Id": message_id,
                       "X-Attempt": "1", "Idempotency-Key": message_id}
            async with session.post(url, data=BODY, headers=headers) as response:
                assert response.status == 200, response.status

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(post_all(session) for _ in range(concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bare-client", nargs=3, metavar=("URL", "N", "C"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_client:
        import uvloop

        url, count, concurrency = args.bare_client
        uvloop.run(bare_client(url, int(count), int(concurrency)))
        return

    print(f"{args.messages} messages of {len(BODY)} bytes, median of {args.runs} runs")
    print(f"{'concurrency':>11} {'bare aiohttp/s':>15} {'ferry worker/s':>15} {'ratio':>6} {'RSS MiB':>8} {'peak MiB':>9}")
    for concurrency in args.concurrency:
        runs = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="ferry-bench-") as workdir:
                runs.append(one_run(Path(workdir), args.messages, concurrency))
        bare = statistics.median(run["bare"] for run in runs)
        worker = statistics.median(run["worker"] for run in runs)
        rss = statistics.median(run["rss_kib"] for run in runs) / 1024
        peak = statistics.median(run["peak_kib"] for run in runs) / 1024
        print(f"{concurrency:>11} {bare:>15,.0f} {worker:>15,.0f} {worker / bare:>6.2f} {rss:>8.1f} {peak:>9.1f}")


if __name__ == "__main__":
    main()
