"""The reliable queue: the guide's LPUSH/BRPOP list, made safe against dying workers.

A message id is in exactly one place at a time: the queue, one worker's in-flight
list, the retry schedule or the dead-letter list. Every move between places is
one Lua script (in ``lua/``), so a crash between two commands cannot lose or
copy a message. docs/storage.md describes the keys, the message hash's fields,
the status words and which script moves an id where.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Literal

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from ferry.adapters.redis import FerryRedisCluster
from ferry.queue.errors import RedisUnavailable
from ferry.queue.keys import Keys
from ferry.queue.message import DeadLetter, Message, MessageStatus, NewMessage, id_time_ms, now_ms

if TYPE_CHECKING:
    from ferry.adapters.redis import Lane

EnqueueOutcome = Literal["queued", "existing", "full", "limited"]
FSYNC_TIMEOUT_MS = 2000
# Ids one script call handles at most, where a call could otherwise handle any number
# (reap, give back, promote, replay, purge): a few milliseconds of Redis each, on a busy
# machine too
# (bench/script_cost.py), so a million dead letters or a worker that died holding ten
# thousand never stall the other clients. The caller calls again while there is more.
SCRIPT_CHUNK = 100
# A worker's registry entry outlives its lease this many times over: a SIGKILLed worker
# stays listed (its heartbeat ageing) for a while after others took back what it held.
ENTRY_LEASES = 3
DEAD_LETTER_FIELDS = ("attempts", "returns", "last_error", "created_at", "updated_at")


class NotDurable(RedisUnavailable):
    """Strict durability: Redis stored the message but did not confirm its fsync in time.

    Redis being unavailable, to every caller: no 202 (a resend with its
    Idempotency-Key is safe).
    """


class Fenced(Exception):
    """This process does not hold the worker's lease (any more): it may not claim or
    settle for that worker id. The reaper gave back what it held, or another process
    took the id; the worker starts over with a new lease."""


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What became of one message handed to `enqueue`.

    `id` is the message's id when queued, the first message's id when its
    idempotency key was seen before, and empty when refused; `status` is that
    message's status now ("" when refused, or when the first message is gone);
    `wait_ms` says how long a rate-limited client should wait.
    """

    outcome: EnqueueOutcome
    id: str
    status: str = ""
    wait_ms: int = 0


@dataclass(frozen=True, slots=True)
class Limits:
    """What the proxy enforces while enqueueing (zeros: nothing)."""

    max_queue_size: int = 0
    rate_per_second: float = 0.0
    rate_capacity: int = 1
    idempotency_ttl_seconds: int = 86400


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The queue's health at a glance: what operators graph and alert on."""

    size: int  # LLEN message_queue: the guide's backlog
    oldest_age_seconds: float  # how long the next message in line has waited
    retry_scheduled: int
    dead_letters: int
    workers: int  # workers holding a lease (alive or not yet reaped)
    partition_sizes: tuple[int, ...] = ()  # each partition's backlog, partition 0 first


@dataclass(frozen=True, slots=True)
class Reaped:
    returned: int
    buried: int


@dataclass(frozen=True, slots=True)
class Handled:
    """What a replay or purge did: how many dead letters, and which ids given were none."""

    count: int
    not_dead: tuple[str, ...] = ()


def _count(raw: bytes | None) -> int:
    """A whole number ferry wrote, or 0 for one it did not (a corrupt dead letter keeps its raw fields)."""
    return int(raw) if raw is not None and raw.isdigit() else 0


def _dead_letter(message_id: str, fields: list[bytes | None]) -> DeadLetter:
    """A dead letter from its hash's fields (all None if the hash is gone)."""
    attempts, returns, last_error, created_at, updated_at = fields
    return DeadLetter(
        id=message_id,
        attempts=_count(attempts),
        returns=_count(returns),
        last_error=last_error.decode(errors="replace") if last_error else None,
        created_at_ms=_count(created_at) or id_time_ms(message_id),  # not stored since 2026-12-02
        died_at_ms=_count(updated_at),
    )


def _enqueued(outcome: bytes, detail: bytes | int, status: bytes) -> Enqueued:
    if outcome == b"limited":
        return Enqueued("limited", "", wait_ms=int(detail))
    text = detail.decode() if isinstance(detail, bytes) else str(detail)
    return Enqueued(outcome.decode(), text, status.decode())  # type: ignore[arg-type]


# Prepended to every script: the checks that let a script read a message hash safely.
_MESSAGE_CHECKS = files("ferry.queue").joinpath("lua", "_message.lua").read_text()


def _script(redis: Redis, name: str) -> AsyncScript:
    source = files("ferry.queue").joinpath("lua", f"{name}.lua").read_text()
    return redis.register_script(_MESSAGE_CHECKS + "\n" + source)


_DeadLetterChunk = Callable[[int, Sequence[str]], Awaitable[list[bytes | int]]]


class Queue:
    """Every operation on the queue's keys; each is one Redis round trip.

    (redis-py types its async replies as `X | Awaitable[X]`, hence the
    `type: ignore[misc]` on some awaits.)

    Dead-letter administration excepted: it reads a page in two round trips, and
    changes a long list in chunks.
    """

    def __init__(self, redis: Redis, keys: Keys | None = None, *, partition: int = 0) -> None:
        self.redis = redis
        self.keys = keys or Keys()
        self.partition = partition  # its place among the partitions, stamped on what it claims
        self._enqueue = _script(redis, "enqueue")
        self._claim = _script(redis, "claim")
        self._ack = _script(redis, "ack")
        self._fail = _script(redis, "fail")
        self._promote_due = _script(redis, "promote_due")
        self._reap = _script(redis, "reap")
        self._release = _script(redis, "release")
        self._replay = _script(redis, "replay")
        self._purge = _script(redis, "purge")
        self._upgrade = _script(redis, "upgrade")
        self._heartbeat = _script(redis, "heartbeat")
        # redis-py's cluster pipeline refuses scripts: there, a wait and a claim are two calls.
        self.pipelines_scripts = not isinstance(redis, RedisCluster)
        # The fetcher's waits and claims (`ack_and_claim`) skip the pool (ferry.adapters.redis).
        # ferry's clients have lanes (connect() makes them); a bare redis-py client has none.
        make_lane = getattr(redis, "lane", None)
        self._lane: Lane | None = make_lane() if make_lane is not None else None

    async def enqueue(
        self,
        messages: Sequence[NewMessage],
        limits: Limits = Limits(),
        *,
        all_or_nothing: bool = False,
        fsync: bool = False,
        replicas: int = 0,
    ) -> list[Enqueued]:
        """Store and queue messages, one round trip for all of them.

        Each is refused if the queue is full or its rate bucket is empty; with
        `all_or_nothing`, one refusal refuses them all (one bucket for the lot).
        With `fsync`, return only once the append-only file holds them on disk, and
        the append-only files of `replicas` replicas too.
        """
        args: list[str | bytes | int | float] = [
            self.keys.message_prefix,
            now_ms(),
            limits.max_queue_size,
            self.keys.idempotency_prefix,
            limits.idempotency_ttl_seconds,
            1 if all_or_nothing else 0,
            self.keys.rate_prefix,
            limits.rate_per_second,
            limits.rate_capacity,
        ]
        for message in messages:
            args += [
                message.id,
                message.body,
                message.content_type,
                message.idempotency_key,
                message.rate_bucket,
                message.sender,
            ]
        if fsync:
            reply = await self._enqueue_fsynced(args, replicas)
        else:
            reply = await self._enqueue(keys=[self.keys.queue, self.keys.stats], args=args)
        if not reply:  # all queued: the script says so with an empty list, not a triple per message
            return [Enqueued("queued", message.id, "queued") for message in messages]
        return [_enqueued(reply[i], reply[i + 1], reply[i + 2]) for i in range(0, len(reply), 3)]

    async def _enqueue_fsynced(self, args: list[str | bytes | int | float], replicas: int) -> list[bytes]:
        # WAITAOF waits for the writes of its own connection: one pipeline, one connection.
        keys = [self.keys.queue, self.keys.stats]
        wait = ("WAITAOF", 1, replicas, FSYNC_TIMEOUT_MS)
        if isinstance(self.redis, FerryRedisCluster):  # to the master of this queue's slot
            evalsha = ("EVALSHA", self._enqueue.sha, len(keys), *keys, *args)
            reply, fsynced = await self.redis.pipeline_on_master_of(
                self.keys.queue, evalsha, wait, script=self._enqueue
            )
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                await self._enqueue(keys=keys, args=args, client=pipe)
                pipe.execute_command(*wait)
                reply, fsynced = await pipe.execute(raise_on_error=False)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(fsynced, Exception):  # e.g. appendonly turned off meanwhile
            raise NotDurable(f"cannot fsync: {fsynced}")
        if fsynced[0] < 1:
            raise NotDurable(f"not fsynced to the append-only file within {FSYNC_TIMEOUT_MS} ms")
        if fsynced[1] < replicas:  # a failover could lose it: never a weaker 202
            raise NotDurable(f"fsynced by {fsynced[1]} of {replicas} replicas within {FSYNC_TIMEOUT_MS} ms")
        return reply  # type: ignore[no-any-return]

    async def claim(
        self, worker_id: str, limit: int, *, holder: str, block_seconds: float = 0
    ) -> list[Message]:
        """Take up to `limit` messages into this worker's in-flight set.

        With `block_seconds`, wait that long on an empty queue for the first, in the
        same round trip: BLMOVE from the queue's front back to its front, and the claim
        script behind it in one pipeline (Redis reads a blocked client's next command
        only once the block ends). On a queue that is not empty, the BLMOVE answers at
        once. The wait moves nothing: an id moved into the in-flight set outside the
        fenced claim script could be stranded there by a worker that was fenced off
        meanwhile and then died.
        Raises `Fenced` when `holder` does not hold the worker's lease.
        """
        if block_seconds <= 0:
            return await self._claim_now(worker_id, limit, holder)
        if not self.pipelines_scripts:
            return await self._claim_or_wait(worker_id, limit, holder, block_seconds)
        _, claimed = await self.ack_and_claim(worker_id, (), 0, limit, holder=holder, block_seconds=block_seconds)
        return claimed

    async def _claim_or_wait(self, worker_id: str, limit: int, holder: str, block_seconds: float) -> list[Message]:
        """Without pipelined scripts: claim; on an empty queue, wait for one, then claim again."""
        claimed = await self._claim_now(worker_id, limit, holder)
        if claimed:
            return claimed
        if not await self.wait_for_message(block_seconds):
            return []
        return await self._claim_now(worker_id, limit, holder)

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
        """`ack` these ids, then `claim` (waiting up to `block_seconds` on an empty queue
        if more than 0), in one round trip.

        Redis runs the ack at once, before any wait; its reply comes with the claim's.
        Returns whether the ack ran (False: its reply was an error, and the caller
        should ack again on its own, which says why) and the claimed messages.
        Without pipelined scripts (`pipelines_scripts`), the ack is a call of its own.
        """
        if not self.pipelines_scripts:
            if acked:
                await self.ack(worker_id, acked, status_ttl_seconds, holder=holder)
            return True, await self._claim_or_wait(worker_id, limit, holder, block_seconds)
        claim_keys, claim_args = self._claim_arguments(worker_id, limit, holder)
        commands: list[tuple[str | int | float, ...]] = []
        if acked:
            ack_keys, ack_args = self._ack_arguments(worker_id, acked, status_ttl_seconds, holder)
            commands.append(("EVALSHA", self._ack.sha, len(ack_keys), *ack_keys, *ack_args))
        if block_seconds > 0:  # BLMOVE's 0 would wait for ever
            commands.append(("BLMOVE", self.keys.queue, self.keys.queue, "RIGHT", "RIGHT", block_seconds))
        commands.append(("EVALSHA", self._claim.sha, len(claim_keys), *claim_keys, *claim_args))
        replies = await self._round_trip(commands)
        acks_ran = not (acked and isinstance(replies[0], Exception))
        if block_seconds > 0 and isinstance(replies[-2], Exception):  # the BLMOVE's
            raise replies[-2]
        reply = replies[-1]
        if isinstance(reply, RedisUnavailable):  # NOSCRIPT (a flushed cache, a new master) among them
            return acks_ran, await self._claim_now(worker_id, limit, holder)  # which loads the script
        if isinstance(reply, Exception):
            raise reply
        return acks_ran, self._claimed(worker_id, reply)

    async def _round_trip(self, commands: list[tuple[str | int | float, ...]]) -> list[Any]:
        """The commands' replies (errors in their place): on this queue's lane, which its
        fetcher alone uses, or, while the lane is busy, as a pipeline of the pool."""
        if self._lane is not None and not self._lane.busy:
            return await self._lane.execute(commands)
        async with self.redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute(raise_on_error=False)

    async def wait_for_message(self, block_seconds: float) -> bool:
        """Wait up to `block_seconds` until the queue holds a message; move nothing."""
        arrived = await self.redis.blmove(
            self.keys.queue, self.keys.queue, block_seconds, "RIGHT", "RIGHT"  # type: ignore[arg-type]  # seconds may be fractional
        )
        return arrived is not None

    def _claim_arguments(self, worker_id: str, limit: int, holder: str) -> tuple[list[str], list[str | int]]:
        keys = [self.keys.queue, self.keys.in_flight(worker_id), self.keys.dead, self.keys.heartbeat(worker_id)]
        return keys, [self.keys.message_prefix, now_ms(), limit, worker_id, holder]

    async def _claim_now(self, worker_id: str, limit: int, holder: str) -> list[Message]:
        keys, args = self._claim_arguments(worker_id, limit, holder)
        return self._claimed(worker_id, await self._claim(keys=keys, args=args))

    def _claimed(self, worker_id: str, reply: Any) -> list[Message]:
        """The messages of a claim script's reply; `Fenced` for its refusal."""
        if reply == b"fenced":
            raise Fenced(worker_id)
        return [self._message(*reply[i : i + 5]) for i in range(0, len(reply), 5)]

    def _message(
        self, raw_id: bytes, body: bytes, content_type: bytes, attempt: int, created_at: bytes | None
    ) -> Message:
        message_id = raw_id.decode()
        return Message(
            id=message_id,
            body=body,
            content_type=content_type.decode(),
            attempt=int(attempt),
            created_at_ms=int(created_at) if created_at else id_time_ms(message_id),  # not stored since 2026-12-02
            partition=self.partition,
        )

    async def ack(
        self, worker_id: str, message_ids: Sequence[str], status_ttl_seconds: int, *, holder: str
    ) -> int:
        """Record deliveries: status `delivered`, bodies freed; how many were recorded.

        Out of this worker's in-flight set, or, for one the reaper took back
        meanwhile, off wherever it waits (see ack.lua): the main server has it.
        """
        keys, args = self._ack_arguments(worker_id, message_ids, status_ttl_seconds, holder)
        return int(await self._ack(keys=keys, args=args))

    def _ack_arguments(
        self, worker_id: str, message_ids: Sequence[str], status_ttl_seconds: int, holder: str
    ) -> tuple[list[str], list[str | int]]:
        keys = [
            self.keys.in_flight(worker_id),
            self.keys.heartbeat(worker_id),
            self.keys.queue,
            self.keys.retry,
            self.keys.dead,
            self.keys.stats,
        ]
        return keys, [self.keys.message_prefix, now_ms(), status_ttl_seconds, holder, *message_ids]

    async def retry_later(
        self, worker_id: str, message_id: str, due_ms: int, error: str, *, holder: str
    ) -> bool:
        """Schedule another attempt at `due_ms`; False if this worker no longer held it."""
        return await self._settle_failure(worker_id, message_id, error, str(due_ms), holder)

    async def bury(self, worker_id: str, message_id: str, error: str, *, holder: str) -> bool:
        """Move to the dead letters; False if this worker no longer held it."""
        return await self._settle_failure(worker_id, message_id, error, "", holder)

    async def _settle_failure(
        self, worker_id: str, message_id: str, error: str, due: str, holder: str
    ) -> bool:
        moved = await self._fail(
            keys=[
                self.keys.in_flight(worker_id),
                self.keys.retry,
                self.keys.dead,
                self.keys.message(message_id),
                self.keys.heartbeat(worker_id),
                self.keys.stats,
            ],
            args=[message_id, now_ms(), error, due, holder],
        )
        return bool(moved)

    async def promote_due(self, limit: int = SCRIPT_CHUNK) -> int:
        """Queue the retries whose time has come, `limit` per script call; safe to call
        from every worker at once."""
        promoted, moved = 0, limit
        while moved == limit:
            moved = int(
                await self._promote_due(
                    keys=[self.keys.retry, self.keys.queue, self.keys.dead],
                    args=[self.keys.message_prefix, now_ms(), limit],
                )
            )
            promoted += moved
        return promoted

    async def next_retry_ms(self) -> int | None:
        """When the next scheduled retry is due (ms), None when none is scheduled."""
        first = await self.redis.zrange(self.keys.retry, 0, 0, withscores=True)
        return int(first[0][1]) if first else None

    async def heartbeat(
        self,
        worker_id: str,
        holder: str,
        lease_seconds: float,
        *,
        take: bool = False,
        entry: Mapping[str, str | int | float] | None = None,
    ) -> bool:
        """Renew this worker's lease (or take it, at start); False when `holder` is fenced off.

        With `entry`, the same call writes the worker's registry entry (those fields,
        plus `heartbeat_at` by Redis's clock), kept for `ENTRY_LEASES` leases.
        """
        args: list[str | int | float] = [holder, int(lease_seconds * 1000), worker_id, "1" if take else "0"]
        if entry:
            args.append(int(lease_seconds * 1000 * ENTRY_LEASES))
            for field, value in entry.items():
                args += [field, value]
        held = await self._heartbeat(
            keys=[self.keys.heartbeat(worker_id), self.keys.workers, self.keys.worker_info(worker_id)],
            args=args,
        )
        return bool(held)

    async def lease_holder(self, worker_id: str) -> str | None:
        """Who holds `worker_id`'s lease now, if anyone."""
        holder = await self.redis.get(self.keys.heartbeat(worker_id))
        return holder.decode() if holder is not None else None

    async def drop_lease(self, worker_id: str) -> None:
        await self.redis.delete(self.keys.heartbeat(worker_id))

    async def reap(self, max_returns: int) -> Reaped:
        """Give back the in-flight messages of every worker whose lease ran out."""
        returned = buried = 0
        more = True
        while more:
            returned_now, buried_now, more = await self._reap(
                keys=[self.keys.workers, self.keys.queue, self.keys.dead, self.keys.stats],
                args=[
                    self.keys.message_prefix,
                    self.keys.in_flight_prefix,
                    self.keys.heartbeat_prefix,
                    max_returns,
                    now_ms(),
                    SCRIPT_CHUNK,
                ],
            )
            returned += int(returned_now)
            buried += int(buried_now)
        return Reaped(returned, buried)

    async def release(self, worker_id: str, *, holder: str) -> int:
        """Give back all this worker holds (a clean shutdown) and leave the registry."""
        return await self._give_back(worker_id, (), holder, sign_off=True)

    async def return_strays(self, worker_id: str, held: Collection[str], *, holder: str) -> int:
        """Give back what this worker's in-flight set holds beyond `held`: claims whose
        replies were lost. Only safe while no claim of this worker is under way."""
        return await self._give_back(worker_id, held, holder, sign_off=False)

    async def _give_back(
        self, worker_id: str, held: Collection[str], holder: str, *, sign_off: bool
    ) -> int:
        """Read the in-flight set a page at a time, newest first, and give back what is not
        held, a page per script call (each O(page log n), whatever the set's size)."""
        in_flight = self.keys.in_flight(worker_id)
        released, start, more = 0, 0, True
        while more:
            page = [raw.decode() for raw in await self.redis.zrange(in_flight, start, start + SCRIPT_CHUNK - 1, desc=True)]
            more = len(page) == SCRIPT_CHUNK
            strays = [message_id for message_id in page if message_id not in held]
            start += len(page) - len(strays)  # the held ones stay where they are
            if strays or (sign_off and not more):
                released += await self._release_ids(worker_id, strays, holder, sign_off=sign_off and not more)
        return released

    async def _release_ids(self, worker_id: str, message_ids: Sequence[str], holder: str, *, sign_off: bool) -> int:
        given_back = int(
            await self._release(
                keys=[
                    self.keys.in_flight(worker_id),
                    self.keys.queue,
                    self.keys.heartbeat(worker_id),
                    self.keys.workers,
                    self.keys.dead,
                    self.keys.worker_info(worker_id),
                ],
                args=[self.keys.message_prefix, now_ms(), worker_id, "1" if sign_off else "0", holder, *message_ids],
            )
        )
        if given_back < 0:
            raise Fenced(worker_id)
        return given_back

    async def dead_letters(self, limit: int = 50, offset: int = 0) -> list[DeadLetter]:
        """A page of the dead-letter list, the most recently dead first; two round trips."""
        if limit <= 0:
            return []
        newest_first = await self.redis.zrevrange(self.keys.dead, offset, offset + limit - 1)
        ids = [raw.decode() for raw in newest_first]
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for message_id in ids:
                pipe.hmget(self.keys.message(message_id), list(DEAD_LETTER_FIELDS))
            rows = await pipe.execute()
        return [_dead_letter(message_id, row) for message_id, row in zip(ids, rows)]

    async def replay(self, message_ids: Sequence[str]) -> Handled:
        """Put dead letters back on the queue with their attempts reset; other ids are left alone."""
        return await self._given(self._replay_chunk, message_ids)

    async def replay_all(self) -> Handled:
        """Put every dead letter back on the queue, the longest dead first."""
        return await self._oldest(self._replay_chunk)

    async def purge(self, message_ids: Sequence[str] | None = None) -> Handled:
        """Delete dead letters and their bodies for good: the ids given, or (None) every one."""
        if message_ids is None:
            return await self._oldest(self._purge_chunk)
        return await self._given(self._purge_chunk, message_ids)

    async def _replay_chunk(self, oldest: int, message_ids: Sequence[str]) -> list[bytes | int]:
        return await self._replay(  # type: ignore[no-any-return]
            keys=[self.keys.dead, self.keys.queue],
            args=[self.keys.message_prefix, now_ms(), oldest, *message_ids],
        )

    async def _purge_chunk(self, oldest: int, message_ids: Sequence[str]) -> list[bytes | int]:
        return await self._purge(  # type: ignore[no-any-return]
            keys=[self.keys.dead], args=[self.keys.message_prefix, oldest, *message_ids]
        )

    async def _given(self, chunk: _DeadLetterChunk, message_ids: Sequence[str]) -> Handled:
        """Each id once, a chunk of them per script call (each chunk atomic)."""
        unique = list(dict.fromkeys(message_ids))
        count, not_dead = 0, []
        for start in range(0, len(unique), SCRIPT_CHUNK):
            reply = await chunk(0, unique[start : start + SCRIPT_CHUNK])
            count += int(reply[0])
            not_dead += [raw.decode() for raw in reply[1:] if isinstance(raw, bytes)]
        return Handled(count, tuple(not_dead))

    async def _oldest(self, chunk: _DeadLetterChunk) -> Handled:
        """The whole list, a chunk per script call from its oldest end.

        Bounded by the length it had at the start: a replayed message that the
        main server refuses again dies anew at the other end, and is not
        replayed a second time in a loop that might never end.
        """
        remaining = await self.dead_size()
        count = 0
        while remaining > 0:
            moved = int((await chunk(min(SCRIPT_CHUNK, remaining), []))[0])
            if moved == 0:
                break
            count += moved
            remaining -= moved
        return Handled(count)

    async def status(self, message_id: str) -> MessageStatus | None:
        fields = await self.redis.hgetall(self.keys.message(message_id))  # type: ignore[misc]
        if not fields:
            return None
        fields.pop(b"body", None)
        return MessageStatus.from_hash(message_id, fields)

    async def snapshot(self) -> Snapshot:
        """One round trip for every figure of `Snapshot`."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(self.keys.queue)
            pipe.lindex(self.keys.queue, -1)
            pipe.zcard(self.keys.retry)
            pipe.zcard(self.keys.dead)
            pipe.scard(self.keys.workers)
            size, next_id, retry, dead, workers = await pipe.execute()
        oldest = 0.0
        if next_id is not None:
            oldest = max(0.0, (now_ms() - id_time_ms(next_id.decode())) / 1000)
        return Snapshot(int(size), oldest, int(retry), int(dead), int(workers))

    async def size(self) -> int:
        """The backlog: `LLEN message_queue`, as the guide reads it."""
        return int(await self.redis.llen(self.keys.queue))  # type: ignore[misc]

    async def dead_size(self) -> int:
        return int(await self.redis.zcard(self.keys.dead))

    async def upgrade(self) -> int:
        """Move what ferry 0.1 kept as lists (dead letters, in-flight ids) into today's
        sorted sets, a chunk a call; how many ids were moved. Run at worker start."""
        moved, left = 0, 1
        while left:
            moved_now, left = await self._upgrade(
                keys=[self.keys.legacy_dead_list, self.keys.dead, self.keys.workers],
                args=[self.keys.message_prefix, now_ms(), SCRIPT_CHUNK, self.keys.in_flight_prefix],
            )
            moved += int(moved_now)
        return moved

    async def ping(self) -> bool:
        return bool(await self.redis.ping())  # type: ignore[misc]
