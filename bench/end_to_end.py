"""End to end: an open-loop generator through the HTTPS proxy, one worker, the sink.

The generator (a process of its own: uvloop, aiohttp, the proxy's CA verified) schedules
send i at start + i/rate on the clock and fires it then, however many earlier sends are
still waiting (open loop: a slow proxy makes latency, not a slower generator). Each body
carries its scheduled time; the sink takes the delay from it to arrival (CLOCK_MONOTONIC
of the same machine). The 202's own delay is measured by the generator.

Saturation: the same generator closed-loop on 64 connections for the duration: accepted/s
(202s) and delivered/s (unique sink arrivals in the same window).

    python -m bench.end_to_end generate --url U --cafile F --key K --rate R --duration D
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.bodies import body

API_KEY = "bench-key"


def quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": pick(0.50), "p99": pick(0.99), "max": ordered[-1]}


def distribution(values: list[float], points: int = 500) -> list[float]:
    """`points` evenly spaced order statistics (and the max): the plot's curve, kept small."""
    ordered = sorted(values)
    if len(ordered) <= points:
        return ordered
    return [ordered[i * (len(ordered) - 1) // (points - 1)] for i in range(points)]


async def generate(url: str, cafile: str, rate: float, duration: float, closed: int) -> dict[str, Any]:
    """Open loop at `rate`/s, or `closed` lanes as fast as answered; what the proxy said."""
    import aiohttp

    context = ssl.create_default_context(cafile=cafile)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    answered: list[float] = []
    refused = 0
    connector = aiohttp.TCPConnector(limit=closed or 256, ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(number: int, scheduled: float) -> None:
            nonlocal refused
            async with session.post(url, data=body(number, scheduled), headers=headers) as response:
                await response.read()
                if response.status == 202:
                    answered.append(time.monotonic() - scheduled)
                else:
                    refused += 1

        start = time.monotonic() + 0.2
        if closed:
            counter = iter(range(10**9))
            async def lane() -> None:
                while time.monotonic() < start + duration:
                    await send(next(counter), time.monotonic())
            await asyncio.sleep(start - time.monotonic())
            await asyncio.gather(*(lane() for _ in range(closed)))
        else:
            tasks = []
            for number in range(int(rate * duration)):
                scheduled = start + number / rate
                delay = scheduled - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(send(number, scheduled)))
            await asyncio.gather(*tasks)
        elapsed = time.monotonic() - start
    return {"accepted": len(answered), "refused": refused, "elapsed": elapsed,
            "accept_latency": quantiles(answered)}


def generator(url: str, cafile: Path, rate: float, duration: float, closed: int = 0) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.end_to_end", "generate", "--url", url, "--cafile", str(cafile),
         "--rate", str(rate), "--duration", str(duration), "--closed", str(closed)],
        capture_output=True, text=True, timeout=duration + 120, cwd=harness.ROOT,
        env={**os.environ, "PYTHONPATH": str(harness.ROOT)})
    if done.returncode:
        raise RuntimeError(done.stderr[-1500:])
    return json.loads(done.stdout)  # type: ignore[no-any-return]


class Stack:
    """Valkey, `ferry proxy` on HTTPS, one `ferry worker`, the sink."""

    def __init__(self, work: Path, certs: Any, concurrency: int = 16) -> None:
        self.work, self.certs = work, certs
        self.redis_cm = harness.redis_server(work)
        self.redis = self.redis_cm.__enter__()
        self.sink = harness.Sink(work)
        ferry = str(Path(sys.executable).parent / "ferry")
        self.port = harness.free_port()
        env = {"REDIS_URL": self.redis.url, "FERRY_API_KEYS": API_KEY, "LOG_LEVEL": "WARNING",
               "FERRY_HOME": str(work / "home"), "MAIN_SERVER_URL": self.sink.url,
               "WORKER_CONCURRENCY": str(concurrency), "WORKER_METRICS_PORT": "0"}
        self.proxy = harness.spawn(
            [ferry, "proxy", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key)],
            work / "proxy.log", env)
        self.worker = harness.spawn([ferry, "worker"], work / "worker.log", env)
        harness.wait_listening(self.port, self.proxy, work / "proxy.log")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/api/v1/messages"

    def close(self) -> None:
        for process in (self.worker, self.proxy):
            harness.stop(process)
        self.sink.close()
        self.redis_cm.__exit__(None, None, None)


def open_loop(stack: Stack, rate: float, duration: float,
              samples: dict[str, list[float]]) -> dict[str, float]:
    """One open-loop run; its delays (seconds) kept in `samples` for the plot (the last run's)."""
    stack.sink.reset()
    sent = generator(stack.url, stack.certs.ca, rate, duration)
    expected = sent["accepted"]
    stack.sink.wait_for(expected, stack.worker, timeout=60 + duration)
    delays = stack.sink.latencies()
    samples[f"{rate:g}"] = distribution(delays)
    latency = quantiles(delays)
    return {"p50_ms": latency["p50"] * 1e3, "p99_ms": latency["p99"] * 1e3,
            "max_ms": latency["max"] * 1e3, "accept_p99_ms": sent["accept_latency"]["p99"] * 1e3,
            "refused": float(sent["refused"])}


def saturation(stack: Stack, duration: float) -> dict[str, float]:
    stack.sink.reset()
    before = stack.sink.stats()["unique"]
    sent = generator(stack.url, stack.certs.ca, 0, duration, closed=64)
    delivered = stack.sink.stats()["unique"] - before
    return {"accepted_per_s": sent["accepted"] / sent["elapsed"],
            "delivered_per_s": delivered / sent["elapsed"]}


def run(rates: list[float], duration: float, runs: int, retries: int) -> dict[str, Any]:
    from tests.support.certs import make_certs

    with tempfile.TemporaryDirectory(prefix="ferry-bench-e2e-") as tmp:
        work = Path(tmp)
        certs = make_certs(work)
        stack = Stack(work, certs)
        try:
            time.sleep(1.0)  # the worker's start-up
            latencies: dict[str, list[float]] = {}
            cases = [(f"open loop {rate:g}/s",
                      lambda r=rate: open_loop(stack, r, duration, latencies)) for rate in rates]
            cases.append(("saturation, 64 connections", lambda: saturation(stack, duration)))
            series = harness.rounds(cases, runs, retries)
        finally:
            stack.close()
    rows = [{"rate": rate, **{k: series[f"open loop {rate:g}/s"].median(k)
                              for k in ("p50_ms", "p99_ms", "max_ms", "accept_p99_ms", "refused")},
             "foreign_load": series[f"open loop {rate:g}/s"].median("foreign_load")} for rate in rates]
    sat = series["saturation, 64 connections"]
    return {"rows": rows, "duration": duration, "latencies": latencies,
            "saturation": {k: sat.median(k) for k in ("accepted_per_s", "delivered_per_s", "foreign_load")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["generate"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--cafile", required=True)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--closed", type=int, default=0, help="lanes of a closed loop instead")
    args = parser.parse_args()
    import uvloop

    print(json.dumps(uvloop.run(generate(args.url, args.cafile, args.rate, args.duration, args.closed))))


if __name__ == "__main__":
    main()
