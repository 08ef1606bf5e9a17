"""Every Redis key ferry uses, built in one place.

`message_queue` keeps the guide's name so `LLEN message_queue` stays the backlog.
Every other key carries the `{message_queue}` hash tag: all of them live in one
Redis Cluster slot, so each multi-key Lua script stays legal on a cluster.
docs/storage.md describes each key's type, contents, TTL and writers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot


@dataclass(frozen=True)
class Keys:
    """The keys of one queue; another queue name means another independent group."""

    queue: str = "message_queue"

    @property
    def tag(self) -> str:
        return "{" + self.queue + "}"

    @property
    def message_prefix(self) -> str:
        """Prefix of the hash that holds one message: body, status, attempts."""
        return f"{self.tag}:msg:"

    @property
    def in_flight_prefix(self) -> str:
        """Prefix of the sorted set (by claim time) of ids a worker has claimed and not yet settled."""
        return f"{self.tag}:inflight:"

    @property
    def heartbeat_prefix(self) -> str:
        """Prefix of the key whose TTL is a worker's lease on its in-flight set."""
        return f"{self.tag}:heartbeat:"

    @property
    def idempotency_prefix(self) -> str:
        """Prefix of the key that maps a client's Idempotency-Key to the first message's id."""
        return f"{self.tag}:idem:"

    @property
    def rate_prefix(self) -> str:
        """Prefix of an API key's token bucket (hash of tokens and last refill)."""
        return f"{self.tag}:rate:"

    @property
    def retry(self) -> str:
        """Sorted set of ids waiting for another attempt, scored by due time (ms)."""
        return f"{self.tag}:retry"

    @property
    def dead(self) -> str:
        """Sorted set of ids that will not be delivered without an operator's replay,
        scored by when each died (ms)."""
        return f"{self.tag}:dead_letters"

    @property
    def legacy_dead_list(self) -> str:
        """Where ferry 0.1 kept its dead letters, as a list: `Queue.upgrade` moves them."""
        return f"{self.tag}:dead"

    @property
    def workers(self) -> str:
        """Set of worker ids that may hold in-flight sets (what the reaper scans)."""
        return f"{self.tag}:workers"

    @property
    def stats(self) -> str:
        """Hash of queue-wide counters (`enqueued`, `delivered`, `dead`) the scripts bump:
        in/out rates across every proxy and worker, from two readings."""
        return f"{self.tag}:stats"

    @property
    def worker_info_prefix(self) -> str:
        """Prefix of the hash a running worker describes itself in (the worker registry)."""
        return f"{self.tag}:worker:"

    @property
    def autoscaler_decisions(self) -> str:
        """List of the autoscalers' last decisions, newest first (JSON objects, LPUSH + LTRIM)."""
        return f"{self.tag}:autoscaler:decisions"

    @property
    def pools(self) -> str:
        """Set of the ids (`host:pid`) of running worker pools, which `ferry workers scale` picks from."""
        return f"{self.tag}:pools"

    def pool(self, pool_id: str) -> str:
        """Hash a running pool describes itself in: host, pid, size, wanted, heartbeat_at."""
        return f"{self.tag}:pool:{pool_id}"

    def pool_control(self, pool_id: str) -> str:
        """List of scaling requests (JSON) to one pool: the portable control channel."""
        return f"{self.tag}:pool:{pool_id}:control"

    @property
    def partitions(self) -> str:
        """Set of the queue names of every partition above 0 that a proxy ever sent to:
        workers drain these too, so changing FERRY_PARTITIONS strands nothing."""
        return f"{self.tag}:partitions"

    @property
    def health(self) -> str:
        """A short-lived string the proxy's health route writes: does Redis take writes?"""
        return f"{self.tag}:health"

    def message(self, message_id: str) -> str:
        return self.message_prefix + message_id

    def in_flight(self, worker_id: str) -> str:
        return self.in_flight_prefix + worker_id

    def heartbeat(self, worker_id: str) -> str:
        return self.heartbeat_prefix + worker_id

    def worker_info(self, worker_id: str) -> str:
        return self.worker_info_prefix + worker_id


def partition_names(queue: str, count: int) -> tuple[str, ...]:
    """The queue names of `count` partitions: `queue` itself, then `queue:<p>.<k>`.

    Partition p's name hashes to the slot p/count of the way round the ring of
    16384 slots from partition 0's, `k` being the first number that makes it so:
    a pure function of `count`, the same in every process, that puts the groups
    on `count` different masters of a cluster whose slots are spread evenly.
    """
    return tuple(_partition_name(queue, p, count) for p in range(count))


@lru_cache(maxsize=64)
def _partition_name(queue: str, partition: int, count: int) -> str:
    if partition == 0:
        return queue
    target = (key_slot(queue.encode()) + partition * REDIS_CLUSTER_HASH_SLOTS // count) % REDIS_CLUSTER_HASH_SLOTS
    suffix = 0
    while key_slot(f"{queue}:{partition}.{suffix}".encode()) != target:
        suffix += 1  # about 16,384 tries on average: milliseconds, once per process
    return f"{queue}:{partition}.{suffix}"
