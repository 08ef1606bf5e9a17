"""One reading of the whole queue: what `ferry queue watch`, `ferry workers list`,
`ferry verify`, the dashboard and `GET /api/v1/stats` all show.

Two round trips whatever the queue holds: the queue's figures, the counters, the
ids of the workers and Redis's clock; then each worker's entry and in-flight size.
With partitions, one round trip more, to every partition above 0 at once: their
figures, counters and in-flight sizes are added to partition 0's.
Rates come from two readings (`rates`), since the counters are cumulative: every
proxy and worker bumps them inside its scripts, so the difference is the traffic
of the whole system, whichever process handled it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from pydantic import BaseModel
from redis.asyncio.cluster import RedisCluster

from ferry.observe.registry import WorkerRecord, records, redis_seconds
from ferry.queue import Partitions, Queue
from ferry.queue.message import id_time_ms

# The autoscaler decisions a snapshot carries, newest first (the list keeps 50).
DECISIONS = 10
STATS_FIELDS = ("enqueued", "delivered", "dead")


class QueueFigures(BaseModel):
    size: int  # every partition's backlog; with one partition, LLEN message_queue: the guide's
    oldest_age_seconds: float  # how long the next message in line has waited
    retry_scheduled: int
    dead_letters: int
    in_flight: int  # claimed by a registered worker, not yet settled
    enqueued_total: int  # messages stored, since the counters began
    delivered_total: int
    dead_total: int  # refused for good, out of attempts or poison pills
    partition_sizes: list[int] = []  # each partition's backlog, partition 0 (message_queue) first


class Snapshot(BaseModel):
    taken_at: float  # unix seconds, Redis's clock
    queue: QueueFigures
    workers: list[WorkerRecord]
    autoscaler: list[dict[str, Any]]  # the last decisions, newest first, as recorded


class Rates(BaseModel):
    """Per second, between two snapshots."""

    seconds: float
    enqueued_per_second: float  # in
    delivered_per_second: float  # out
    dead_per_second: float
    size_change_per_second: float  # growth of the backlog (negative: it shrinks)


class Reading(Snapshot):
    """A snapshot and the rates since the one before it: what `ferry queue watch` prints."""

    rates: Rates

    @classmethod
    def of(cls, older: Snapshot, newer: Snapshot) -> Reading:
        return cls(**dict(newer), rates=rates(older, newer))


async def take_snapshot(queue: Partitions) -> Snapshot:
    await queue.refresh()
    first = queue.first
    keys = first.keys
    on_cluster = isinstance(first.redis, RedisCluster)
    async with first.redis.pipeline(transaction=False) as pipe:
        if not on_cluster:  # a cluster pipeline refuses TIME, a command of no key
            pipe.time()
        pipe.lrange(keys.autoscaler_decisions, 0, DECISIONS - 1)
        pipe.smembers(keys.workers)
        _queue_figures(pipe, first)
        replies = await pipe.execute()
    time_reply = await _cluster_time(first) if on_cluster else replies.pop(0)
    decisions, raw_ids, *first_figures = replies
    now = redis_seconds(time_reply)
    worker_ids = [raw.decode(errors="replace") for raw in raw_ids]
    workers, in_flight = await _workers(first, worker_ids, now)
    others = await asyncio.gather(*(_partition(group, worker_ids) for group in queue.groups[1:]))
    partitions = [first_figures, *(figures for figures, _ in others)]
    in_flight += sum(held for _, held in others)
    totals = [sum(int(value or 0) for value in counter) for counter in zip(*(stats for *_, stats in partitions))]
    figures = QueueFigures(
        size=sum(size for size, *_ in partitions),
        oldest_age_seconds=max(_age_seconds(next_id, now) for _, next_id, *_ in partitions),
        retry_scheduled=sum(retry for _, _, retry, *_ in partitions),
        dead_letters=sum(dead for *_, dead, _ in partitions),
        in_flight=in_flight,
        enqueued_total=totals[0],
        delivered_total=totals[1],
        dead_total=totals[2],
        partition_sizes=[size for size, *_ in partitions],
    )
    return Snapshot(taken_at=now, queue=figures, workers=workers, autoscaler=_decisions(decisions))


async def _cluster_time(group: Queue) -> Any:
    """TIME on the master of the partition's slot, the clock its scripts stamp with."""
    cluster: RedisCluster = group.redis  # type: ignore[assignment]
    return await cluster.execute_command("TIME", target_nodes=cluster.get_node_from_key(group.keys.queue))


def _queue_figures(pipe: Any, group: Queue) -> None:
    """Queue a partition's size, next id, retry and dead sizes and counters on `pipe`."""
    keys = group.keys
    pipe.llen(keys.queue)
    pipe.lindex(keys.queue, -1)
    pipe.zcard(keys.retry)
    pipe.zcard(keys.dead)
    pipe.hmget(keys.stats, list(STATS_FIELDS))


async def _partition(group: Queue, worker_ids: list[str]) -> tuple[list[Any], int]:
    """A partition's figures, and what the registered workers hold in it: one round trip."""
    async with group.redis.pipeline(transaction=False) as pipe:
        _queue_figures(pipe, group)
        for worker_id in worker_ids:
            pipe.zcard(group.keys.in_flight(worker_id))
        replies = await pipe.execute()
    return replies[:5], sum(replies[5:])


def rates(older: Snapshot, newer: Snapshot) -> Rates:
    """What happened between two snapshots. A counter that went down (its key was
    deleted) counts as no traffic rather than negative traffic."""
    seconds = max(newer.taken_at - older.taken_at, 1e-6)

    def per_second(before: int, after: int) -> float:
        return max(0, after - before) / seconds

    return Rates(
        seconds=seconds,
        enqueued_per_second=per_second(older.queue.enqueued_total, newer.queue.enqueued_total),
        delivered_per_second=per_second(older.queue.delivered_total, newer.queue.delivered_total),
        dead_per_second=per_second(older.queue.dead_total, newer.queue.dead_total),
        size_change_per_second=(newer.queue.size - older.queue.size) / seconds,
    )


def _age_seconds(next_id: bytes | None, now: float) -> float:
    made_ms = id_time_ms(next_id.decode(errors="replace")) if next_id is not None else 0
    return max(0.0, now - made_ms / 1000) if made_ms else 0.0


async def _workers(queue: Queue, worker_ids: list[str], now: float) -> tuple[list[WorkerRecord], int]:
    """The live entries of the registered ids, and how many ids all their in-flight sets
    hold (a dead worker's too, until the reaper gives them back): one round trip."""
    async with queue.redis.pipeline(transaction=False) as pipe:
        for worker_id in worker_ids:
            pipe.hgetall(queue.keys.worker_info(worker_id))
            pipe.zcard(queue.keys.in_flight(worker_id))
        replies = await pipe.execute()
    return records(replies[0::2], now), sum(replies[1::2])


def _decisions(raw: list[bytes]) -> list[dict[str, Any]]:
    """The recorded decisions that are JSON objects (anything else is skipped)."""
    decoded = []
    for entry in raw:
        try:
            value = orjson.loads(entry)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict):
            decoded.append(value)
    return decoded
