"""What one `ferry worker` costs when the load is light, against draining a backlog.

One worker process (WORKER_CONCURRENCY 16 unless told) delivers into a sink in this
process. In order: a pre-loaded backlog drained (CPU measured from the first to the
last arrival, start-up excluded); 30 s with no traffic (idle CPU); then open-loop
generators at 10, 100 and 500 messages/s: each send is scheduled on a clock, not
after the previous delivery, and enqueued straight into Redis as the proxy would
(the proxy is not under test here). Reported per phase: the worker's CPU per
delivered message, and at steady rates the delay from each scheduled send to its
arrival at the sink (p50, p99), and the Redis commands the worker sent per message
(EVALSHA and BLMOVE, from INFO commandstats: a pipeline's commands count one each),
and how busy the whole machine was meanwhile (/proc/stat, all cores: this bench, its
Redis and the worker included), to tell a run that other work disturbed.

CPU is the worker process's own user+system time from /proc/<pid>/stat, not wall
time: on a machine shared with other work, CPU per message moves far less with
foreign load than a rate or a latency does (latency figures are the noisier ones).

    python bench/light_load.py [--backlog 20000] [--seconds 10] [--idle 30] [--runs 1] [--floor] [--profile PREFIX]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ferry.queue import Queue  # noqa: E402
from ferry.queue.connection import connect  # noqa: E402
from ferry.queue.message import NewMessage, new_message_id  # noqa: E402
from tests.support.servers import RedisProcess, free_port  # noqa: E402

BODY_SIZE = 500
RATES = (10, 100, 500)
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
TICKS = os.sysconf("SC_CLK_TCK")
# What --floor times, one at a time (see `floor`).
FLOORS = ("POST aiohttp", "POST pyreqwest", "script call", "3 pipelined", "3 on a lane")


def body(scheduled: float) -> bytes:
    """A 500-byte JSON body carrying its scheduled send time (monotonic clock)."""
    head = b'{"t": %.6f, "pad": "' % scheduled
    return head + b"x" * (BODY_SIZE - len(head) - 2) + b'"}'


class Sink(asyncio.Protocol):
    """Answers every request `200 {}` and notes each body's delay since its scheduled send."""

    arrivals: list[float] = []  # delays, seconds
    arrived = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].lower()
            start = head.find(b"content-length:")
            line_end = head.find(b"\r\n", start)
            length = int(head[start + 15 : line_end if line_end > 0 else len(head)])
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            payload, self.buffer = self.buffer[head_end + 4 : end], self.buffer[end:]
            scheduled = float(payload[6 : payload.index(b",")])
            Sink.arrivals.append(time.monotonic() - scheduled)
            Sink.arrived += 1
            self.transport.write(OK)


def machine_ticks() -> tuple[int, int]:
    """(busy, all) clock ticks of every core since boot, from /proc/stat."""
    fields = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


async def wait_arrived(count: int, worker: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while Sink.arrived < count:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{Sink.arrived} of {count} arrived")
        await asyncio.sleep(0.001)


async def command_calls(queue: Queue) -> dict[str, int]:
    """Redis's count of calls per command (INFO commandstats)."""
    stats = await queue.redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


async def steady(queue: Queue, rate: int, seconds: float, worker: subprocess.Popen[bytes]) -> dict[str, float]:
    """Open loop: message i is due at start + i/rate and sent then (at once if late)."""
    count = int(rate * seconds)
    await asyncio.sleep(0.5)
    Sink.arrivals.clear()
    first = Sink.arrived
    cpu, commands, ticks = cpu_seconds(worker.pid), await command_calls(queue), machine_ticks()
    start = time.monotonic() + 0.01
    for i in range(count):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await queue.enqueue([NewMessage(new_message_id(), body(due), "application/json")])
    await wait_arrived(first + count, worker)
    cpu = cpu_seconds(worker.pid) - cpu
    busy, total = (now - then for now, then in zip(machine_ticks(), ticks))
    after = await command_calls(queue)
    # The worker's own commands: its scripts (less the bench's enqueue, one a message) and waits.
    calls = after.get("evalsha", 0) - commands.get("evalsha", 0) - count
    calls += after.get("blmove", 0) - commands.get("blmove", 0)
    delays = sorted(Sink.arrivals)
    return {
        "cpu_us": cpu / count * 1e6,
        "redis_calls": calls / count,
        "machine_busy_pct": busy / total * 100,
        "p50_ms": delays[len(delays) // 2] * 1000,
        "p99_ms": delays[int(len(delays) * 0.99)] * 1000,
    }


async def one_run(workdir: Path, args: argparse.Namespace) -> dict[str, float]:
    redis = RedisProcess("valkey", workdir / "valkey", appendfsync="everysec")
    redis.start()
    port = free_port()
    server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", port)
    client = connect(redis.url)
    queue = Queue(client)
    Sink.arrived = 0
    try:
        for start in range(0, args.backlog, 500):
            await queue.enqueue(
                [NewMessage(new_message_id(), body(0.0), "application/json") for _ in range(min(500, args.backlog - start))]
            )
        env = {
            **os.environ,
            "REDIS_URL": redis.url,
            "MAIN_SERVER_URL": f"http://127.0.0.1:{port}/webhook",
            "WORKER_CONCURRENCY": str(args.concurrency),
            "WORKER_METRICS_PORT": "0",
            "LOG_LEVEL": "WARNING",
        }
        with open(workdir / "worker.log", "ab") as log:
            worker = subprocess.Popen(
                [shutil.which("ferry") or "ferry", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            return await phases(queue, worker, args)
        finally:
            worker.terminate()
            worker.wait(30)
    finally:
        await client.aclose()
        server.close()
        redis.kill()


async def phases(queue: Queue, worker: subprocess.Popen[bytes], args: argparse.Namespace) -> dict[str, float]:
    result: dict[str, float] = {}
    await wait_arrived(1, worker, timeout=60)
    cpu, first = cpu_seconds(worker.pid), Sink.arrived
    await wait_arrived(args.backlog, worker)
    result["backlog_cpu_us"] = (cpu_seconds(worker.pid) - cpu) / (args.backlog - first) * 1e6
    await asyncio.sleep(2)
    cpu = cpu_seconds(worker.pid)
    await asyncio.sleep(args.idle)
    result["idle_pct"] = (cpu_seconds(worker.pid) - cpu) / args.idle * 100
    for rate in args.rates:
        spy = profile(worker.pid, f"{args.profile}-{rate}.txt") if args.profile else None
        figures = await steady(queue, rate, args.seconds, worker)
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
            spy.wait(30)
        result |= {f"{name}@{rate}": value for name, value in figures.items()}
    return result


def profile(pid: int, path: str) -> subprocess.Popen[bytes]:
    """py-spy sampling the worker (its CPU moves the worker's figures a little: compare A/B without it)."""
    command = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--output", path, *os.environ.get("LIGHT_LOAD_SPY", "--nonblocking").split()]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def floor(rates: list[int], seconds: float) -> dict[str, float]:
    """What any worker pays at these rates, on a clock, CPU of this process (all its threads):
    a lone POST (aiohttp, and pyreqwest, the worker's client where installed), a lone script
    call, and the worker's light-load round trip (an ack, a BLMOVE, a claim: three commands)
    as a pipeline of redis-py's pool and on a lane (ferry.adapters.redis.Lane)."""
    import aiohttp
    from pyreqwest.client import ClientBuilder

    port = free_port()
    server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", port)
    with tempfile.TemporaryDirectory(prefix="ferry-floor-") as workdir:
        redis = RedisProcess("valkey", Path(workdir), appendfsync="everysec")
        redis.start()
        client = connect(redis.url)
        script = client.register_script("return redis.call('GET', KEYS[1])")
        await script(keys=["k"], args=[])
        three = [("EVALSHA", script.sha, 1, "k"), ("LMOVE", "q", "q", "RIGHT", "RIGHT"), ("EVALSHA", script.sha, 1, "k")]
        lane = client.lane()
        payload = body(0.0)
        url = f"http://127.0.0.1:{port}/"
        result: dict[str, float] = {}
        try:
            async with aiohttp.ClientSession() as session, ClientBuilder().build() as reqwest:

                async def post() -> None:
                    headers = {"Content-Type": "application/json"}
                    async with session.post(url, data=payload, headers=headers) as answer:
                        await answer.read()

                async def post_reqwest() -> None:
                    request = reqwest.post(url).header("Content-Type", "application/json").body_bytes(payload)
                    async with request.streamed_read_buffer_limit(0).build_streamed() as answer:
                        answer.status

                async def call() -> None:
                    await script(keys=["k"], args=[])

                async def pipelined() -> None:
                    async with client.pipeline(transaction=False) as pipe:
                        for command in three:
                            pipe.execute_command(*command)
                        await pipe.execute(raise_on_error=False)

                async def on_lane() -> None:
                    await lane.execute(three)

                operations = dict(zip(FLOORS, (post, post_reqwest, call, pipelined, on_lane), strict=True))
                for rate in rates:
                    for name, operation in operations.items():
                        result[f"{name}@{rate}"] = await on_a_clock(operation, rate, seconds)
        finally:
            await client.aclose()
            redis.kill()
            server.close()
    return result


async def on_a_clock(operation: Callable[[], Awaitable[None]], rate: int, seconds: float) -> float:
    """CPU µs of this process per `operation`, started `rate` times a second."""
    count = int(rate * seconds)
    for _ in range(20):
        await operation()
    cpu, start = time.process_time(), time.monotonic()
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await operation()
    return (time.process_time() - cpu) / count * 1e6


def report(runs: list[dict[str, float]], args: argparse.Namespace) -> None:
    def median(name: str) -> float:
        return statistics.median(run[name] for run in runs)

    print(f"worker concurrency {args.concurrency}, {BODY_SIZE}-byte bodies, median of {len(runs)} run(s)")
    print(
        f"{'load':>10} {'CPU µs/msg':>11} {'x backlog':>10} {'p50 ms':>8} {'p99 ms':>8} {'commands/msg':>13}"
        f" {'machine busy':>13}"
    )
    backlog = median("backlog_cpu_us")
    print(f"{'backlog':>10} {backlog:>11.0f} {1.0:>10.2f} {'':>8} {'':>8} {'':>13}")
    for rate in args.rates:
        cpu = median(f"cpu_us@{rate}")
        print(
            f"{f'{rate}/s':>10} {cpu:>11.0f} {cpu / backlog:>10.2f} "
            f"{median(f'p50_ms@{rate}'):>8.2f} {median(f'p99_ms@{rate}'):>8.2f} {median(f'redis_calls@{rate}'):>13.2f}"
            f" {median(f'machine_busy_pct@{rate}'):>12.0f}%"
        )
    print(f"idle (no traffic, {args.idle:.0f} s): {median('idle_pct'):.2f}% of a core")
    if args.floor:
        floors = uvloop.run(floor(args.rates, min(args.seconds, 5.0)))
        print("floor, in this process at the same rates (CPU µs each):")
        print(f"{'':>10}" + "".join(f" {name:>14}" for name in FLOORS))
        for rate in args.rates:
            print(f"{f'{rate}/s':>10}" + "".join(f" {floors[f'{name}@{rate}']:>14.0f}" for name in FLOORS))
    if args.json:
        print(json.dumps(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=10.0, help="each steady rate lasts this long")
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--rates", type=int, nargs="+", default=list(RATES))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="also print every run's figures")
    parser.add_argument("--floor", action="store_true", help="also time lone POSTs, a script call and a 3-command round trip (pool, lane) per rate")
    parser.add_argument("--profile", metavar="PREFIX", help="py-spy each steady rate into PREFIX-<rate>.txt")
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="ferry-light-") as workdir:
            runs.append(uvloop.run(one_run(Path(workdir), args)))
    report(runs, args)


if __name__ == "__main__":
    main()
