"""Python Redis clients on ferry's ingest path, measured in one run against one Valkey.

For each client, with 64 concurrent asyncio tasks on uvloop:

- `lpush`:     one LPUSH of a 500-byte body per call (docs/architecture.md: ~6,200/s);
- `enqueue`:   ferry's own `Queue.enqueue` with one message per call: one EVALSHA of
               `enqueue.lua`, its ARGV built (and its reply parsed) by ferry's code;
- `coalesced`: the same, the 64 tasks going through ferry's `Coalescer`, so one call
               carries every message that gathered while the previous one was out.

`Queue` is handed a thin adapter in place of redis-py (it only needs `register_script`),
so every client runs the exact calls the proxy makes. Each figure is the median of
`--runs`, each run timing `--ops` operations (messages) after a short warm-up; `spread`
is (max - min) / median of ops/s over the runs (a busy machine shows there). CPU is
this process's CPU time (all threads, so a client's native I/O threads count too) per
operation and per Redis call; `ratio` compares ops/s with redis-py+hiredis `lpush` of the
same invocation. Before timing, each client is checked (and any problem printed): a
binary (non-UTF-8) body must come back intact, and cancelled calls (500 enqueues in
flight; a 1 s BLPOP after 50 ms) must end within 200 ms, the client answering right after.

    pip install coredis valkey-glide   # benchmark only; not ferry dependencies
    python bench/redis_clients.py [--ops 20000] [--runs 3] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import redis
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ferry.queue import Enqueued, Queue  # noqa: E402
from ferry.queue.batching import Coalescer  # noqa: E402
from ferry.queue.message import NewMessage, new_message_id  # noqa: E402
from tests.support.servers import RedisProcess  # noqa: E402

BODY = b'{"payload": "' + b"x" * 485 + b'"}'  # 500 bytes (docs/architecture.md)
BINARY_BODY = bytes(range(256)) * 2  # not UTF-8: bodies must pass through untouched
LPUSH_KEY = "bench:lpush"
CASES = ("lpush", "enqueue", "coalesced")

ScriptCall = Callable[..., Awaitable[Any]]  # script(keys=[...], args=[...]), as redis-py's


class Client(Protocol):
    """What the benchmark and ferry's `Queue.enqueue` need, in each library's own idiom."""

    def register_script(self, source: str) -> ScriptCall: ...
    async def lpush(self, key: str, value: bytes) -> Any: ...
    async def blpop(self, key: str, timeout: float) -> Any: ...
    async def close(self) -> None: ...


class RedisPy:
    """redis-py's asyncio client, ferry's own; its script runs EVALSHA, loading on NOSCRIPT."""

    def __init__(self, port: int, hiredis: bool) -> None:
        from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser
        from redis.asyncio import ConnectionPool, Redis

        parser = _AsyncHiredisParser if hiredis else _AsyncRESP2Parser
        self.redis = Redis(
            connection_pool=ConnectionPool(host="127.0.0.1", port=port, parser_class=parser)
        )

    def register_script(self, source: str) -> ScriptCall:
        return self.redis.register_script(source)

    async def lpush(self, key: str, value: bytes) -> Any:
        return await self.redis.lpush(key, value)  # type: ignore[misc]

    async def blpop(self, key: str, timeout: float) -> Any:
        return await self.redis.blpop([key], timeout)  # type: ignore[misc]

    async def close(self) -> None:
        await self.redis.aclose()


class Coredis:
    """coredis 6: the client is an async context manager, entered before any command."""

    def __init__(self, port: int) -> None:
        import coredis  # type: ignore[import-not-found, unused-ignore]

        self.redis = coredis.Redis(host="127.0.0.1", port=port)

    async def start(self) -> None:
        await self.redis.__aenter__()

    def register_script(self, source: str) -> ScriptCall:
        return self.redis.register_script(source)  # type: ignore[no-any-return, unused-ignore]

    async def lpush(self, key: str, value: bytes) -> Any:
        return await self.redis.lpush(key, [value])

    async def blpop(self, key: str, timeout: float) -> Any:
        return await self.redis.blpop([key], timeout)

    async def close(self) -> None:
        await self.redis.__aexit__(None, None, None)


class Glide:
    """valkey-glide: a Rust core over FFI; `invoke_script` runs EVALSHA, loading on NOSCRIPT."""

    def __init__(self, port: int) -> None:
        import glide  # type: ignore[import-not-found, unused-ignore]

        self.glide = glide
        self.port = port
        glide.Logger.set_logger_config(glide.LogLevel.ERROR)  # its warnings would cut the table

    async def start(self) -> None:
        address = self.glide.NodeAddress("127.0.0.1", self.port)
        self.client = await self.glide.GlideClient.create(
            self.glide.GlideClientConfiguration([address])
        )

    def register_script(self, source: str) -> ScriptCall:
        script = self.glide.Script(source)  # type: ignore[no-untyped-call, unused-ignore]

        async def call(keys: list[str], args: list[Any]) -> Any:
            # glide takes only str and bytes: numbers must be turned into text first
            encoded = [arg if isinstance(arg, bytes | str) else str(arg) for arg in args]
            return await self.client.invoke_script(script, keys=keys, args=encoded)

        return call

    async def lpush(self, key: str, value: bytes) -> Any:
        return await self.client.lpush(key, [value])

    async def blpop(self, key: str, timeout: float) -> Any:
        return await self.client.blpop([key], timeout)

    async def close(self) -> None:
        await self.client.close()


CLIENTS: dict[str, tuple[str, str, Callable[[int], Client]]] = {
    # name: (module that must import, what to pip install, factory)
    "redis-py+hiredis": ("hiredis", "'redis[hiredis]<8'", lambda port: RedisPy(port, hiredis=True)),
    "redis-py (pure)": ("redis", "'redis<8'", lambda port: RedisPy(port, hiredis=False)),
    "coredis": ("coredis", "coredis", Coredis),
    "valkey-glide": ("glide", "valkey-glide", Glide),
}


async def start(name: str, port: int) -> tuple[Client, Queue]:
    client = CLIENTS[name][2](port)
    if hasattr(client, "start"):
        await client.start()
    return client, Queue(client)  # type: ignore[arg-type, unused-ignore]


@dataclass
class Figure:
    rate: float  # operations (messages) per second
    cpu_us: float  # process CPU per operation
    per_call: float  # operations per Redis call


async def drive(ops: int, concurrency: int, op: Callable[[], Awaitable[Any]]) -> None:
    """`ops` calls of `op` from `concurrency` tasks sharing one budget."""
    remaining = ops

    async def task() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await op()

    await asyncio.gather(*(task() for _ in range(concurrency)))


async def measure(client: Client, queue: Queue, case: str, ops: int, concurrency: int) -> Figure:
    calls = 0

    async def enqueue(messages: list[NewMessage]) -> list[Enqueued]:
        nonlocal calls
        calls += 1
        return await queue.enqueue(messages)

    coalescer: Coalescer[NewMessage, Enqueued] = Coalescer(enqueue)
    op: Callable[[], Awaitable[Any]] = {
        "lpush": lambda: client.lpush(LPUSH_KEY, BODY),
        "enqueue": lambda: enqueue([NewMessage(new_message_id(), BODY, "application/json")]),
        "coalesced": lambda: coalescer.submit(
            NewMessage(new_message_id(), BODY, "application/json")
        ),
    }[case]
    # Warm-up: fills the connection pool and loads the script.
    await drive(max(ops // 20, concurrency), concurrency, op)
    calls = 0
    wall, cpu = time.perf_counter(), time.process_time()
    await drive(ops, concurrency, op)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Figure(ops / wall, cpu / ops * 1e6, ops / calls if calls else 1.0)


async def check(client: Client, queue: Queue, server: redis.Redis) -> list[str]:
    """Problems with a binary body, or with cancelling calls (enqueues in flight, a BLPOP)."""
    server.flushdb()
    problems = []
    [outcome] = await queue.enqueue([NewMessage("binary", BINARY_BODY, "application/octet-stream")])
    stored = server.hget(queue.keys.message("binary"), "body")
    if outcome.outcome != "queued" or stored != BINARY_BODY:  # type: ignore[comparison-overlap]
        problems.append(f"binary body not stored intact ({outcome})")
    for name, calls in [
        (
            "enqueues under load",
            [queue.enqueue([NewMessage(new_message_id(), BODY, "text/plain")]) for _ in range(500)],
        ),
        ("a 1 s BLPOP", [client.blpop("bench:empty", 1)]),
    ]:
        tasks = [asyncio.ensure_future(call) for call in calls]
        await asyncio.sleep(0.05 if len(tasks) == 1 else 0.002)
        for task in tasks:
            task.cancel()
        started = time.perf_counter()
        done, pending = await asyncio.wait(tasks, timeout=2)
        waited = (time.perf_counter() - started) * 1000
        swallowed = sum(not task.cancelled() and task.exception() is None for task in done)
        if pending or waited > 200 or swallowed == len(tasks):
            problems.append(
                f"cancelling {name}: {swallowed} ended without CancelledError, "
                f"{len(pending)} still running after {waited:.0f} ms"
            )
        try:
            if await client.lpush("bench:after-cancel", b"x") != 1:
                problems.append(f"after cancelling {name}: wrong reply")
        except Exception as error:
            problems.append(f"after cancelling {name}: next command failed with {error!r}")
        server.delete("bench:after-cancel")
    return problems


async def usable(port: int, server: redis.Redis) -> list[str]:
    """The clients installed and working here; the others are reported, never faked."""
    names = []
    for name, (module, package, _) in CLIENTS.items():
        try:
            __import__(module)
        except ImportError:
            print(f"{name}: not installed, skipped (to include it: pip install {package})")
            continue
        try:
            client, queue = await start(name, port)
        except Exception as error:
            print(f"{name}: cannot run here, skipped: {error!r}")
            continue
        try:
            problems = await check(client, queue, server)
        except Exception as error:
            problems = [f"check failed with {error!r}"]
        finally:
            await client.close()
        print(
            f"{name}: "
            + ("; ".join(problems) or "binary body intact, cancellation prompt and clean")
        )
        names.append(name)
    return names


async def one_run(
    names: list[str], port: int, server: redis.Redis, args: argparse.Namespace
) -> dict[tuple[str, str], Figure]:
    figures: dict[tuple[str, str], Figure] = {}
    for name in names:
        client, queue = await start(name, port)
        try:
            for case in CASES:
                server.flushdb()
                figures[name, case] = await measure(client, queue, case, args.ops, args.concurrency)
                stored = server.llen(LPUSH_KEY if case == "lpush" else queue.keys.queue)
                if stored != args.ops + max(args.ops // 20, args.concurrency):
                    raise RuntimeError(f"{name} {case}: {stored} in the list, not every op stored")
        finally:
            await client.close()
    return figures


async def run_all(args: argparse.Namespace, workdir: Path) -> None:
    valkey = RedisProcess("valkey", workdir / "valkey", appendfsync="everysec")
    valkey.start()
    try:
        server = valkey.client()
        # No AOF rewrite (a fork) in the middle of one client's turn.
        server.config_set("auto-aof-rewrite-percentage", 0)
        names = await usable(valkey.port, server)
        runs = [await one_run(names, valkey.port, server, args) for _ in range(args.runs)]
    finally:
        valkey.kill()

    def median(name: str, case: str, field: str) -> float:
        return float(statistics.median(getattr(run[name, case], field) for run in runs))

    base = "redis-py+hiredis", "lpush"
    base_rate = median(*base, "rate") if base[0] in names else float("nan")
    print(
        f"\n{args.ops} ops of a {len(BODY)}-byte body, {args.concurrency} tasks, uvloop, "
        f"medians of {args.runs} runs"
    )
    row = "{:<17} {:<10} {:>8} {:>7} {:>10} {:>9} {:>12} {:>6}"
    print(
        row.format(
            "client", "case", "ops/s", "spread", "µs CPU/op", "ops/call", "µs CPU/call", "ratio"
        )
    )
    for name in names:
        for case in CASES:
            rate, cpu, per_call = (median(name, case, f) for f in ("rate", "cpu_us", "per_call"))
            rates = [run[name, case].rate for run in runs]
            spread = (max(rates) - min(rates)) / rate  # of ops/s across runs: how far to trust it
            print(
                row.format(
                    name,
                    case,
                    f"{rate:,.0f}",
                    f"{spread:.0%}",
                    f"{cpu:.1f}",
                    f"{per_call:.1f}",
                    f"{cpu * per_call:.1f}",
                    f"{rate / base_rate:.2f}",
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ops", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ferry-bench-") as workdir:
        uvloop.run(run_all(args, Path(workdir)))


if __name__ == "__main__":
    main()
