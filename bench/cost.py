"""Cost: a worker's CPU per delivered message against the rate, idle CPU, Redis memory.

- steady rates: messages are queued as the proxy queues them (ferry's Queue.enqueue), one
  every 1/rate s for the duration; the worker's CPU (its whole session) from the first
  enqueue to the last delivery, over the messages delivered: idle polling included, as a
  user pays it. Draining: the delivery benchmark's figure (a backlog, first to last).
- idle: a worker and a `ferry proxy --workers 1` with no traffic, CPU over the window after
  a warm-up, in % of one core.
- Redis memory: INFO's used_memory before and after queueing N 500-byte messages, over N;
  the same for N dead letters (a worker delivering to a sink that answers 400), for N
  delivered messages' status records (kept FERRY_STATUS_TTL_SECONDS), and for the stored
  alternatives (issue 14, item 4): the hash as ferry writes it, the same hash once Valkey
  keeps it as a listpack (hash-max-listpack-value raised above the body), and the body in
  a string key of its own beside a small hash of the other fields.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench import harness
from bench.bodies import body

WARMUP = 20
FERRY_ENV = {"WORKER_METRICS_PORT": "0", "LOG_LEVEL": "WARNING", "WORKER_CONCURRENCY": "16"}


def ferry() -> str:
    return str(Path(sys.executable).parent / "ferry")


async def enqueue_at(redis_url: str, rate: float, duration: float) -> int:
    from ferry.queue import Queue
    from ferry.queue.connection import connect
    from ferry.queue.message import NewMessage, new_message_id

    client = connect(redis_url)
    queue = Queue(client)
    count = max(1, int(rate * duration))
    start = time.monotonic()
    try:
        for number in range(count):
            delay = start + number / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await queue.enqueue([NewMessage(new_message_id(), body(number), "application/json")])
    finally:
        await client.aclose()
    return count


def steady(work: Path, sink: harness.Sink, rate: float, duration: float) -> dict[str, float]:
    sink.reset()
    with harness.redis_server(work) as server:
        worker = harness.spawn([ferry(), "worker"], work / f"worker-{rate:g}.log",
                               {**FERRY_ENV, "REDIS_URL": server.url, "MAIN_SERVER_URL": sink.url})
        try:
            time.sleep(2.0)  # start-up, not counted
            cpu = harness.session_cpu(worker.pid)
            count = asyncio.run(enqueue_at(server.url, rate, duration))
            sink.wait_for(count, worker, timeout=60)
            cpu = harness.session_cpu(worker.pid) - cpu
        finally:
            harness.stop(worker)
    return {"cpu_us_per_message": cpu / count * 1e6}


def idle(work: Path, which: str, warmup: float, window: float) -> dict[str, float]:
    with harness.redis_server(work) as server:
        env = {**FERRY_ENV, "REDIS_URL": server.url, "MAIN_SERVER_URL": "http://127.0.0.1:9/",
               "FERRY_API_KEYS": "bench-key", "FERRY_HOME": str(work / "home")}
        port = harness.free_port()
        command = ([ferry(), "worker"] if which == "worker"
                   else [ferry(), "proxy", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"])
        process = harness.spawn(command, work / f"idle-{which}.log", env)
        try:
            time.sleep(warmup)
            cpu = harness.session_cpu(process.pid)
            time.sleep(window)
            cpu = harness.session_cpu(process.pid) - cpu
            if process.poll() is not None:
                raise RuntimeError(f"{which} exited: {(work / f'idle-{which}.log').read_text()[-800:]}")
        finally:
            harness.stop(process)
    return {"core_percent": cpu / window * 100}


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])  # type: ignore[index]


def memory(work: Path, count: int) -> dict[str, Any]:
    """Bytes per queued message, per dead letter, per delivered status, and the alternatives."""
    from tests.support.inspect import enqueue

    figures: dict[str, Any] = {"count": count}
    with harness.redis_server(work) as server:
        client = server.client()
        enqueue(server.url, [body(n) for n in range(WARMUP)])  # scripts loaded, keys made
        before = used(client)
        ids = enqueue(server.url, [body(n) for n in range(count)])
        figures["queued"] = (used(client) - before) / count
        key = f"{{message_queue}}:msg:{ids[0]}"
        figures["queued_key_usage"] = client.memory_usage(key, samples=0)
        figures["queued_encoding"] = client.object("encoding", key).decode()  # type: ignore[union-attr]
        figures["fields"] = {k.decode(): len(v) for k, v in client.hgetall(key).items()}  # type: ignore[union-attr]
        figures["hash_max_listpack_value"] = int(client.config_get("hash-max-listpack-value")["hash-max-listpack-value"])
        fields = client.hgetall(key)
        figures["alternatives"] = alternatives(client, fields, count)  # type: ignore[arg-type]
    for outcome, path in (("dead", "/reject"), ("delivered", "/webhook")):
        figures[outcome] = settled(work, count, path)
    return figures


def alternatives(client: redis.Redis, fields: dict[bytes, bytes], count: int) -> dict[str, float]:
    """Bytes per message of each way to keep the same fields, N copies each, in a spare db."""
    spare = redis.Redis(port=client.connection_pool.connection_kwargs["port"], db=1)
    results: dict[str, float] = {}
    body_value = fields[b"body"]
    others = {k: v for k, v in fields.items() if k != b"body"}
    default_limit = spare.config_get("hash-max-listpack-value")["hash-max-listpack-value"]

    def measure(name: str, write: Any) -> None:
        spare.execute_command("FLUSHDB", "SYNC")  # else freed lazily (lazyfree-lazy-user-flush)
        before = used(spare)
        for start in range(0, count, 500):
            pipe = spare.pipeline(transaction=False)
            for n in range(start, min(start + 500, count)):
                write(pipe, n)
            pipe.execute()
        results[name] = (used(spare) - before) / count
        spare.execute_command("FLUSHDB", "SYNC")

    measure("hash as stored (hashtable)", lambda p, n: p.hset(f"m:{n:036d}", mapping=fields))
    spare.config_set("hash-max-listpack-value", str(len(body_value) + 64))
    measure("hash as a listpack (hash-max-listpack-value raised)",
            lambda p, n: p.hset(f"m:{n:036d}", mapping=fields))
    spare.config_set("hash-max-listpack-value", default_limit)
    measure("body in a string key + listpack hash",
            lambda p, n: (p.set(f"b:{n:036d}", body_value), p.hset(f"m:{n:036d}", mapping=others)))
    measure("body alone in a string key (the floor)", lambda p, n: p.set(f"b:{n:036d}", body_value))
    spare.close()
    return results


def settled(work: Path, count: int, path: str) -> float:
    """Bytes per message once a worker settled them all (dead letters, or delivered statuses).

    A first batch of WARMUP messages is settled before `used_memory` is read, so that the
    scripts' cache, the counters and the registry are there already and not counted.
    """
    from tests.support.inspect import enqueue

    sink = harness.Sink(work)
    try:
        with harness.redis_server(work) as server:
            client = server.client()
            url = f"http://127.0.0.1:{sink.port}{path}"
            field = b"dead" if path == "/reject" else b"delivered"
            before = 0
            for batch, total in ((WARMUP, WARMUP), (count, WARMUP + count)):
                if batch == count:
                    before = used(client)
                enqueue(server.url, [body(n) for n in range(batch)])
                settle(work, server.url, url, client, field, total)
            return (used(client) - before) / count
    finally:
        sink.close()


def settle(work: Path, redis_url: str, url: str, client: redis.Redis, field: bytes,
           total: int) -> None:
    """Run a worker until the queue's counter `field` reaches `total`, then stop it."""
    worker = harness.spawn([ferry(), "worker"], work / "settle.log",
                           {**FERRY_ENV, "REDIS_URL": redis_url, "MAIN_SERVER_URL": url})
    try:
        deadline = time.monotonic() + 120
        done = 0
        while time.monotonic() < deadline:
            done = int(client.hget("{message_queue}:stats", field) or 0)  # type: ignore[arg-type]
            if done >= total:
                return
            time.sleep(0.1)
        raise TimeoutError(f"{done}/{total} settled")
    finally:
        harness.stop(worker)


def run(rates: list[float], duration: float, idle_window: float, memory_count: int,
        runs: int, retries: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ferry-bench-cost-") as tmp:
        work = Path(tmp)
        sink = harness.Sink(work)
        try:
            cases = [(f"{rate:g}/s", lambda r=rate: steady(work, sink, r, duration)) for rate in rates]
            cases += [(f"idle {which}", lambda w=which: idle(work, w, 3.0, idle_window))
                      for which in ("worker", "proxy")]
            series = harness.rounds(cases, runs, retries)
        finally:
            sink.close()
        mem = memory(work, memory_count)
    return {
        "rates": [{"rate": rate, "cpu_us_per_message": series[f"{rate:g}/s"].median("cpu_us_per_message"),
                   "foreign_load": series[f"{rate:g}/s"].median("foreign_load")} for rate in rates],
        "idle": {w: series[f"idle {w}"].median("core_percent") for w in ("worker", "proxy")},
        "memory": mem,
        "duration": duration,
    }
