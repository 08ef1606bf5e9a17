"""The queue as ferry's processes use it: one or more partitions, each a whole `Queue`.

A partition is a key group of its own (`Keys` with another queue name, so its
own hash tag and Cluster slot), and each Lua script still touches one group. A
message lives in one partition for its whole life. Proxies spread messages over
the partitions; workers drain every partition, rotating; what reads the whole
queue (status, dead letters, figures) asks each partition and adds up.

With one partition (`FERRY_PARTITIONS=1`, the default) every call goes straight
to that `Queue`: the layout, and the round trips, of a ferry without partitions.
docs/scaling.md ("Partitions") explains the layout and how to move between counts.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import zlib
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from math import ceil
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from ferry.queue.errors import RedisFailure, RedisUnavailable, WritesRefused
from ferry.queue.keys import Keys, partition_names
from ferry.queue.message import DeadLetter, Message, MessageStatus, NewMessage
from ferry.queue.queue import Enqueued, Fenced, Handled, Limits, Queue, Reaped, Snapshot

T = TypeVar("T")
# How long a watch waits on an empty partition's list before it waits again.
WATCH_SECONDS = 1.0
# What passes a claim over to the next partition: its master away, or refusing writes.
PASSED_OVER = (RedisUnavailable, WritesRefused)
# Readers look for partitions added by proxies with a larger FERRY_PARTITIONS at most this often.
REFRESH_SECONDS = 5.0


def _stable_hash(text: str) -> int:
    """The same number in every process (Python's own `hash` of a str is salted per process)."""
    return zlib.crc32(text.encode())


def _place(name: str) -> tuple[int, int, str]:
    """Where a recorded name sorts: by partition, then suffix (`queue:<p>.<k>`), so that
    every reader numbers one count's partitions alike; anything else last."""
    partition, _, suffix = name.rpartition(":")[2].partition(".")
    if partition.isdigit() and suffix.isdigit():
        return int(partition), int(suffix), name
    return 1 << 30, 0, name


class Partitions:
    """Every operation of `Queue`, over all partitions.

    Workers also drain partitions recorded by proxies with a larger
    FERRY_PARTITIONS than their own (`adopt_recorded`); a worker claims in a
    partition only once it holds its lease there (taken with its next heartbeat).
    """

    def __init__(self, redis: Redis, count: int = 1, keys: Keys | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys()  # partition 0's: the registry, pools and decisions live there
        self.count = count  # the partitions this process sends to
        self.groups = [
            Queue(redis, Keys(queue=name), partition=index)
            for index, name in enumerate(partition_names(self.keys.queue, count))
        ]
        self._recorded = count == 1  # proxies: the names above 0 are in the record
        self._turn = itertools.count()  # proxies: whose turn an unpinned call is
        self._next_claim = 0  # workers: where the next claim starts
        self._leased: set[int] = set()  # partitions whose lease this worker's holder holds
        self._to_take: set[int] = set()  # partitions adopted since: their lease is taken, not renewed
        self._maybe_waiting: set[int] = set(range(count))  # partitions a claim may find messages in
        self._watches: dict[int, asyncio.Task[bool]] = {}
        self._arrived = asyncio.Event()
        self._closing = False
        self._refreshed_at = -REFRESH_SECONDS  # monotonic

    @property
    def pipelines_scripts(self) -> bool:
        """Whether an ack and the next claim may share a round trip: one partition only."""
        return len(self.groups) == 1 and self.groups[0].pipelines_scripts

    @property
    def first(self) -> Queue:
        return self.groups[0]

    # --- the proxy's side -------------------------------------------------------

    async def enqueue(
        self,
        messages: Sequence[NewMessage],
        limits: Limits = Limits(),
        *,
        all_or_nothing: bool = False,
        fsync: bool = False,
        replicas: int = 0,
    ) -> list[Enqueued]:
        """`Queue.enqueue`, each message to its partition, one call per partition, all at once.

        A message with a Partition-Key, or else an Idempotency-Key, goes to the
        partition of that key (a resend meets its first copy); the others of one
        call go together to the next partition in turn. An all-or-nothing batch is
        one script call, so one partition: its first pinned message's, or the next.
        The queue cap and the rate are shared out evenly: each partition enforces
        1/N of them.
        """
        if len(self.groups) == 1:
            return await self.first.enqueue(
                messages, limits, all_or_nothing=all_or_nothing, fsync=fsync, replicas=replicas
            )
        await self.record()
        by_partition = self._spread(messages, all_or_nothing)
        shares = self._share(limits)
        replies = await asyncio.gather(
            *(
                self.groups[partition].enqueue(
                    [messages[i] for i in indexes], shares, all_or_nothing=all_or_nothing, fsync=fsync, replicas=replicas
                )
                for partition, indexes in by_partition.items()
            )
        )
        results: list[Enqueued | None] = [None] * len(messages)
        for indexes, reply in zip(by_partition.values(), replies):
            for i, result in zip(indexes, reply):
                results[i] = result
        return results  # type: ignore[return-value]  # every index is in one partition

    async def enqueue_each(
        self, messages: Sequence[NewMessage], limits: Limits = Limits(), *, fsync: bool = False, replicas: int = 0
    ) -> list[Enqueued | RedisFailure]:
        """`enqueue` of unrelated messages (concurrent requests): a partition whose master
        fails answers its own messages with the failure, and the others are stored."""
        if len(self.groups) == 1:
            return list(await self.first.enqueue(messages, limits, fsync=fsync, replicas=replicas))
        await self.record()
        by_partition = self._spread(messages, all_or_nothing=False)
        shares = self._share(limits)
        replies = await asyncio.gather(
            *(
                self.groups[partition].enqueue([messages[i] for i in indexes], shares, fsync=fsync, replicas=replicas)
                for partition, indexes in by_partition.items()
            ),
            return_exceptions=True,
        )
        results: list[Enqueued | RedisFailure | None] = [None] * len(messages)
        for indexes, reply in zip(by_partition.values(), replies):
            if isinstance(reply, BaseException) and not isinstance(reply, RedisFailure):
                raise reply
            for position, i in enumerate(indexes):
                results[i] = reply if isinstance(reply, RedisFailure) else reply[position]
        return results  # type: ignore[return-value]  # every index is in one partition

    def _spread(self, messages: Sequence[NewMessage], all_or_nothing: bool) -> dict[int, list[int]]:
        """Which messages (by index) go to which partition."""
        pinned = [self._pinned(message) for message in messages]
        if all_or_nothing:
            partition = next((p for p in pinned if p is not None), None)
            return {self._next_turn() if partition is None else partition: list(range(len(messages)))}
        by_partition: dict[int, list[int]] = {}
        turn: int | None = None
        for i, partition in enumerate(pinned):
            if partition is None:
                turn = self._next_turn() if turn is None else turn
                partition = turn
            by_partition.setdefault(partition, []).append(i)
        return by_partition

    def _pinned(self, message: NewMessage) -> int | None:
        if message.partition_key:
            return _stable_hash(message.partition_key) % self.count
        if message.idempotency_key:
            return _stable_hash(f"{message.sender}\0{message.idempotency_key}") % self.count
        return None

    def _next_turn(self) -> int:
        return next(self._turn) % self.count

    def _share(self, limits: Limits) -> Limits:
        count = self.count
        return Limits(
            max_queue_size=ceil(limits.max_queue_size / count),
            rate_per_second=limits.rate_per_second / count,
            rate_capacity=max(1, ceil(limits.rate_capacity / count)),
            idempotency_ttl_seconds=limits.idempotency_ttl_seconds,
        )

    async def record(self) -> None:
        """Write this process's partition names into the record workers read, once, before
        the first message goes to a partition above 0."""
        if not self._recorded:
            await self.redis.sadd(self.keys.partitions, *(group.keys.queue for group in self.groups[1:]))  # type: ignore[misc]
            self._recorded = True

    # --- the worker's side ------------------------------------------------------

    async def adopt_recorded(self) -> int:
        """Add the partitions a proxy recorded that this process does not know yet; how many."""
        recorded = sorted((raw.decode() for raw in await self.redis.smembers(self.keys.partitions)), key=_place)  # type: ignore[misc]
        self._refreshed_at = time.monotonic()
        known = {group.keys.queue for group in self.groups}
        for name in recorded:
            if name not in known:
                partition = len(self.groups)
                self.groups.append(Queue(self.redis, Keys(queue=name), partition=partition))
                self._maybe_waiting.add(partition)
                self._to_take.add(partition)
        return len(self.groups) - len(known)

    async def refresh(self) -> None:
        """Before reading the whole queue: know every partition a proxy sends to."""
        if time.monotonic() - self._refreshed_at >= REFRESH_SECONDS:
            await self.adopt_recorded()

    def start_at(self, worker_id: str) -> None:
        """Start claiming at a partition of this worker's own, so workers spread from the first claim."""
        self._next_claim = _stable_hash(worker_id) % len(self.groups)

    async def claim(
        self, worker_id: str, limit: int, *, holder: str, block_seconds: float = 0
    ) -> list[Message]:
        """`Queue.claim` from one partition, the next after the last that gave some.

        Partitions found empty are watched (a BLMOVE that moves nothing, each on a
        connection of its own): a message arriving in any of them wakes a blocked
        claim, and is noticed by a busy worker at its next claim.
        """
        if len(self.groups) == 1:
            return await self.first.claim(worker_id, limit, holder=holder, block_seconds=block_seconds)
        self._collect_watches()
        claimed = await self._claim_in_turn(worker_id, limit, holder)
        if claimed or block_seconds <= 0:
            return claimed
        self._arrived.clear()
        self._collect_watches()
        if not self._maybe_waiting & self._leased:
            try:
                await asyncio.wait_for(self._arrived.wait(), block_seconds)
            except TimeoutError:
                return []
            self._collect_watches()
        return await self._claim_in_turn(worker_id, limit, holder)

    async def _claim_in_turn(self, worker_id: str, limit: int, holder: str) -> list[Message]:
        """Claim from the first partition in turn that gives some. One whose master is
        away (a failover) is passed over for the next, and its error raised only when
        no other gave any: the worker then waits it out."""
        count = len(self.groups)
        failed: RedisFailure | None = None
        for partition in [(self._next_claim + step) % count for step in range(count)]:
            if partition not in self._leased or partition not in self._maybe_waiting:
                continue
            try:
                messages = await self.groups[partition].claim(worker_id, limit, holder=holder)
            except PASSED_OVER as error:
                failed = failed or error
                self._next_claim = (partition + 1) % count  # the next try starts past it
                continue
            if len(messages) < limit:
                self._maybe_waiting.discard(partition)
                self._watch(partition)
            if messages:
                self._next_claim = (partition + 1) % count
                return messages
        if failed is not None:
            raise failed
        return []

    def _watch(self, partition: int) -> None:
        if partition not in self._watches:
            task = asyncio.create_task(self._wait_in(partition), name=f"watch partition {partition}")
            task.add_done_callback(lambda _: self._arrived.set())
            self._watches[partition] = task

    async def _wait_in(self, partition: int) -> bool:
        group = self.groups[partition]
        while not self._closing:
            if await group.wait_for_message(WATCH_SECONDS):
                return True
        return False

    def _collect_watches(self) -> None:
        """Mark the partitions whose watch saw a message, or failed.

        A watch failed by Redis (its master away) counts as a message: the next claim
        there meets the failure itself, and waits it out. Any other failure is a bug,
        raised for the worker's loop to log.
        """
        bug: BaseException | None = None
        for partition, task in list(self._watches.items()):
            if task.done():
                del self._watches[partition]
                self._maybe_waiting.add(partition)
                error = None if task.cancelled() else task.exception()
                if error is not None and not isinstance(error, RedisFailure):
                    bug = bug or error
        if bug is not None:
            raise bug

    async def close(self) -> None:
        """Stop watching (a worker's last step).

        redis-py may swallow the cancellation of a blocked command (its retry on a
        dropped connection sends it again): the flag ends each watch within one wait."""
        self._closing = True
        watches = list(self._watches.values())
        for task in watches:
            task.cancel()
        if watches:
            await asyncio.wait(watches, timeout=2 * WATCH_SECONDS)
        for task in watches:  # what they failed with is of no use now: collected, not logged as lost
            if task.done() and not task.cancelled():
                task.exception()
        self._watches.clear()

    async def ack_and_claim(
        self,
        worker_id: str,
        acked: Sequence[str],
        status_ttl_seconds: int,
        limit: int,
        *,
        holder: str,
        block_seconds: float,
    ) -> tuple[bool, list[Message]]:
        """`Queue.ack_and_claim`: with one partition only (see `pipelines_scripts`)."""
        return await self.first.ack_and_claim(
            worker_id, acked, status_ttl_seconds, limit, holder=holder, block_seconds=block_seconds
        )

    async def ack(
        self, worker_id: str, messages: Sequence[Message], status_ttl_seconds: int, *, holder: str
    ) -> int:
        """`Queue.ack`, one call per partition the messages came from."""
        if len(self.groups) == 1:  # the hot path of one partition: no task per call
            return await self.first.ack(worker_id, [message.id for message in messages], status_ttl_seconds, holder=holder)
        by_partition: dict[int, list[str]] = {}
        for message in messages:
            by_partition.setdefault(message.partition, []).append(message.id)
        counts = await asyncio.gather(
            *(
                self.groups[partition].ack(worker_id, ids, status_ttl_seconds, holder=holder)
                for partition, ids in by_partition.items()
            )
        )
        return sum(counts)

    async def retry_later(self, worker_id: str, message: Message, due_ms: int, error: str, *, holder: str) -> bool:
        return await self.groups[message.partition].retry_later(worker_id, message.id, due_ms, error, holder=holder)

    async def bury(self, worker_id: str, message: Message, error: str, *, holder: str) -> bool:
        return await self.groups[message.partition].bury(worker_id, message.id, error, holder=holder)

    async def heartbeat(
        self,
        worker_id: str,
        holder: str,
        lease_seconds: float,
        *,
        take: bool = False,
        entry: Mapping[str, str | int | float] | None = None,
    ) -> bool:
        """`Queue.heartbeat` in every partition (the registry entry in partition 0's);
        in a partition adopted since the last, the lease is taken. False if fenced off
        in any: the worker then rejoins, taking every lease anew."""
        to_take = set(range(len(self.groups))) if take else set(self._to_take)
        held = await asyncio.gather(
            *(
                group.heartbeat(
                    worker_id,
                    holder,
                    lease_seconds,
                    take=partition in to_take,
                    entry=entry if partition == 0 else None,
                )
                for partition, group in enumerate(self.groups)
            )
        )
        self._to_take -= to_take
        self._leased = {partition for partition, ok in enumerate(held) if ok}
        return all(held)

    async def lease_holder(self, worker_id: str) -> str | None:
        return await self.first.lease_holder(worker_id)

    async def drop_lease(self, worker_id: str) -> None:
        await self._each(lambda group: group.drop_lease(worker_id))
        self._leased.clear()

    async def reap(self, max_returns: int) -> Reaped:
        reaped = await self._each(lambda group: group.reap(max_returns))
        return Reaped(sum(r.returned for r in reaped), sum(r.buried for r in reaped))

    async def promote_due(self) -> int:
        return sum(await self._each(lambda group: group.promote_due()))

    async def next_retry_ms(self) -> int | None:
        due = [ms for ms in await self._each(lambda group: group.next_retry_ms()) if ms is not None]
        return min(due, default=None)

    async def release(self, worker_id: str, *, holder: str) -> int:
        """`Queue.release` in every partition; `Fenced` (after all) if fenced off in any."""
        released = await self._each(lambda group: group.release(worker_id, holder=holder), fenced_last=True)
        return sum(released)

    async def return_strays(self, worker_id: str, held: Collection[str], *, holder: str) -> int:
        returned = await self._each(lambda group: group.return_strays(worker_id, held, holder=holder), fenced_last=True)
        return sum(returned)

    async def upgrade(self) -> int:
        """Only partition 0 can hold what ferry 0.1 stored."""
        return await self.first.upgrade()

    # --- reading the whole queue ------------------------------------------------

    async def status(self, message_id: str) -> MessageStatus | None:
        """The message's status from whichever partition holds it."""
        await self.refresh()
        found = await self._each(lambda group: group.status(message_id))
        return next((status for status in found if status is not None), None)

    async def snapshot(self) -> Snapshot:
        await self.refresh()
        snapshots = await self._each(lambda group: group.snapshot())
        return Snapshot(
            size=sum(s.size for s in snapshots),
            oldest_age_seconds=max(s.oldest_age_seconds for s in snapshots),
            retry_scheduled=sum(s.retry_scheduled for s in snapshots),
            dead_letters=sum(s.dead_letters for s in snapshots),
            workers=snapshots[0].workers,
            partition_sizes=tuple(s.size for s in snapshots),
        )

    async def size(self) -> int:
        """The backlog of every partition together (partition 0's alone is `LLEN message_queue`)."""
        await self.refresh()
        return sum(await self._each(lambda group: group.size()))

    async def dead_size(self) -> int:
        await self.refresh()
        return sum(await self._each(lambda group: group.dead_size()))

    async def dead_letters(self, limit: int = 50, offset: int = 0) -> list[DeadLetter]:
        """A page of every partition's dead letters, the most recently dead first."""
        await self.refresh()
        if len(self.groups) == 1:
            return await self.first.dead_letters(limit, offset)
        pages = await self._each(lambda group: group.dead_letters(limit + offset, 0))
        merged = heapq.merge(*pages, key=lambda letter: letter.died_at_ms, reverse=True)
        return list(itertools.islice(merged, offset, offset + limit))

    async def replay(self, message_ids: Sequence[str]) -> Handled:
        await self.refresh()
        return self._handled_by_any(message_ids, await self._each(lambda group: group.replay(message_ids)))

    async def replay_all(self) -> Handled:
        await self.refresh()
        return Handled(sum(h.count for h in await self._each(lambda group: group.replay_all())))

    async def purge(self, message_ids: Sequence[str] | None = None) -> Handled:
        await self.refresh()
        handled = await self._each(lambda group: group.purge(message_ids))
        if message_ids is None:
            return Handled(sum(h.count for h in handled))
        return self._handled_by_any(message_ids, handled)

    @staticmethod
    def _handled_by_any(message_ids: Sequence[str], handled: list[Handled]) -> Handled:
        """Ids each partition acted on; those none of them held as dead letters, in the order given."""
        not_dead = set.intersection(*(set(h.not_dead) for h in handled))
        return Handled(sum(h.count for h in handled), tuple(i for i in dict.fromkeys(message_ids) if i in not_dead))

    def homes(self) -> list[tuple[str, str]]:
        """Each partition's queue name and the `host:port` of the master serving its slot,
        as the cluster client's slot map says ("" off a Cluster)."""
        if not isinstance(self.redis, RedisCluster):
            return [(group.keys.queue, "") for group in self.groups]
        places = []
        for group in self.groups:
            node = self.redis.get_node_from_key(group.keys.queue)
            places.append((group.keys.queue, f"{node.host}:{node.port}" if node is not None else "?"))
        return places

    async def ping(self) -> bool:
        return await self.first.ping()

    async def _each(self, call: Callable[[Queue], Awaitable[T]], *, fenced_last: bool = False) -> list[T]:
        """`call` on every partition at once (on a Cluster, their masters work in parallel).

        With `fenced_last`, a `Fenced` of one partition is raised only once every
        other partition's call has finished."""
        if len(self.groups) == 1:
            return [await call(self.first)]
        results = await asyncio.gather(*(call(group) for group in self.groups), return_exceptions=fenced_last)
        if fenced_last:
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise next((e for e in errors if not isinstance(e, Fenced)), errors[0])
        return results  # type: ignore[return-value]
