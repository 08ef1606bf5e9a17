"""How long each of ferry's Lua scripts holds Redis, at a large dead-letter set and a
long in-flight list: every script must be O(k) in the ids it handles, never O(n) in
what the keys hold, or one call freezes every other client (Lua's busy hook does not
fire in time to help).

Time is Redis's own (the slow log, set to log every command, gives each call's µs),
so the client and the loopback do not count: for each operation, how many script
calls it took, the longest of them (what another client may wait) and their sum. The baselines are the previous layout's moves,
run as inline Lua on the same server in the same run: replay and purge by id did an
`LREM` over the whole dead-letter list per id; giving back strays did an `LREM` over
the whole in-flight list per stray (in-flight ids are a sorted set now, by claim time).

    python bench/script_cost.py [--dead 1000000] [--in-flight 10000] [--ids 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ferry.queue import Queue  # noqa: E402
from ferry.queue.connection import connect  # noqa: E402
from ferry.queue.queue import SCRIPT_CHUNK  # noqa: E402
from ferry.queue.message import NewMessage, new_message_id, now_ms  # noqa: E402
from tests.support.servers import RedisProcess  # noqa: E402

NO_BASELINE = None
OLD_REPLAY_BY_ID = """
local reply = 0
for i = 1, #ARGV do
  if redis.call('LREM', KEYS[1], 0, ARGV[i]) > 0 then
    redis.call('LPUSH', KEYS[2], ARGV[i])
    reply = reply + 1
  end
end
return reply
"""
OLD_GIVE_BACK_STRAYS = """
local held = {}
for i = 1, #ARGV do held[ARGV[i]] = true end
local released = 0
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if not held[id] then
    held[id] = true
    redis.call('LREM', KEYS[1], 0, id)
    redis.call('RPUSH', KEYS[2], id)
    released = released + 1
  end
end
return released
"""


@dataclass(frozen=True)
class Cost:
    """Redis's own time in the scripts one operation ran: in all, and its longest call."""

    total_ms: float
    longest_ms: float
    calls: int


async def quiesce(client: redis.asyncio.Redis) -> None:
    """Wait out a background AOF rewrite that the fill set off: while its child lives, every
    write of the parent pays copy-on-write page faults, which is not a script's cost."""
    while True:
        persistence = await client.info("persistence")
        if not persistence.get("aof_rewrite_in_progress") and not persistence.get("rdb_bgsave_in_progress"):
            return
        await asyncio.sleep(0.2)


async def server_cost(client: redis.asyncio.Redis, call: Callable[[], Awaitable[Any]]) -> Cost:
    """What `call` cost Redis, from the slow log (every command logged, with its µs)."""
    await quiesce(client)
    await client.config_set("slowlog-log-slower-than", 0)
    await client.config_set("slowlog-max-len", 100_000)
    await client.slowlog_reset()
    await call()
    entries = await client.slowlog_get(100_000)
    durations = [int(entry["duration"]) for entry in entries if entry["command"].split(b" ")[0] in (b"EVALSHA", b"EVAL")]
    return Cost(sum(durations) / 1000, max(durations, default=0) / 1000, len(durations))


async def fill(client: redis.asyncio.Redis, key: str, ids: list[str], *, sorted_set: bool) -> None:
    for start in range(0, len(ids), 10_000):
        chunk = ids[start : start + 10_000]
        if sorted_set:
            await client.zadd(key, {message_id: number for number, message_id in enumerate(chunk, start)})
        else:
            await client.lpush(key, *chunk)  # type: ignore[misc]


async def dead_letters(url: str, dead: int, ids: int) -> list[tuple[str, float, float]]:
    client = connect(url)
    queue = Queue(client)
    await client.flushall()
    every = [new_message_id() for _ in range(dead)]
    await fill(client, queue.keys.dead, every, sorted_set=True)
    await fill(client, "bench:old-dead-list", every, sorted_set=False)
    picked = random.sample(every, 2 * ids)
    replay_ids, purge_ids = picked[:ids], picked[ids:]
    # The old layout's moves take seconds at this size: a client that waits for them.
    patient = redis.asyncio.Redis.from_url(url, socket_timeout=None)
    old_replay = patient.register_script(OLD_REPLAY_BY_ID)
    rows = [
        ("replay by id", await server_cost(client, lambda: queue.replay(replay_ids)),
         await server_cost(client, lambda: old_replay(keys=["bench:old-dead-list", "bench:q"], args=replay_ids))),
        ("purge by id", await server_cost(client, lambda: queue.purge(purge_ids)),
         await server_cost(client, lambda: old_replay(keys=["bench:old-dead-list", "bench:q"], args=purge_ids))),
        (f"replay all: one chunk, the {SCRIPT_CHUNK} oldest", await server_cost(client, lambda: queue._replay_chunk(SCRIPT_CHUNK, [])), NO_BASELINE),
    ]
    await client.aclose()
    await patient.aclose()
    return [(f"{name}, {ids:,} ids of {dead:,} dead" if "by id" in name else f"{name} of {dead:,} dead", new, old)
            for name, new, old in rows]


async def in_flight(url: str, count: int) -> list[tuple[str, float, float]]:
    client = connect(url)
    queue = Queue(client)
    await client.flushall()
    messages = [NewMessage(new_message_id(), b"x" * 500, "application/json") for _ in range(count)]
    for start in range(0, count, 1000):
        await queue.enqueue(messages[start : start + 1000])
    rows = []

    async def claimed_all(worker: str, holder: str) -> list[str]:
        assert await queue.heartbeat(worker, holder, 30, take=True)
        ids: list[str] = []
        while len(ids) < count:
            ids += [m.id for m in await queue.claim(worker, 1000, holder=holder)]
        return ids

    held = await claimed_all("w", "w")
    half = held[: count // 2]
    rows.append((f"give back strays, {count - len(half):,} of {count:,} in flight",
                 await server_cost(client, lambda: queue.return_strays("w", half, holder="w")), NO_BASELINE))
    await client.delete(queue.keys.in_flight("w"))
    await client.lpush("bench:old-in-flight", *held)  # type: ignore[misc]
    old_strays = client.register_script(OLD_GIVE_BACK_STRAYS)
    rows[-1] = (rows[-1][0], rows[-1][1],
                await server_cost(client, lambda: old_strays(keys=["bench:old-in-flight", "bench:q2"], args=half)))
    await client.delete("bench:q2", "bench:old-in-flight")

    await client.rpush(queue.keys.queue, *held)  # type: ignore[misc]  # all back on the queue
    held = await claimed_all("w2", "w2")
    ack_ids = random.sample(held, 100)
    rows.append((f"ack 100 of {count:,} in flight",
                 await server_cost(client, lambda: queue.ack("w2", ack_ids, 100, holder="w2")), NO_BASELINE))
    rows.append((f"release (shutdown), {count - 100:,} in flight",
                 await server_cost(client, lambda: queue.release("w2", holder="w2")), NO_BASELINE))
    held = await claimed_all("w3", "w3")
    await client.delete(queue.keys.heartbeat("w3"))
    rows.append((f"reap a dead worker, {count:,} in flight",
                 await server_cost(client, lambda: queue.reap(max_returns=3)), NO_BASELINE))
    retry = {message_id: now_ms() - 1 for message_id in (await client.lrange(queue.keys.queue, 0, -1))[:1000]}  # type: ignore[misc]
    await client.zadd(queue.keys.retry, retry)
    rows.append(("promote 1,000 due retries", await server_cost(client, queue.promote_due), NO_BASELINE))
    await client.aclose()
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dead", type=int, default=1_000_000)
    parser.add_argument("--in-flight", type=int, default=10_000)
    parser.add_argument("--ids", type=int, default=1000)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisProcess("valkey", Path(workdir), appendfsync="everysec")
        server.start()
        try:
            rows = await dead_letters(server.url, options.dead, options.ids)
            rows += await in_flight(server.url, options.in_flight)
        finally:
            server.kill()
    print(f"{'operation':<50} {'calls':>5} {'longest ms':>10} {'all ms':>8} {'previous layout ms':>19}")
    for name, new, old in rows:
        previous = "" if old is NO_BASELINE else f"{old.total_ms:,.1f}"
        print(f"{name:<50} {new.calls:>5} {new.longest_ms:>10.2f} {new.total_ms:>8.2f} {previous:>19}")


if __name__ == "__main__":
    asyncio.run(main())
