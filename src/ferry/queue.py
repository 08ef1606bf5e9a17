"""The reliable queue: the guide's LPUSH/BRPOP list, made safe against dying workers.

A message id is in exactly one place at a time: the queue, one worker's in-flight
list, the retry schedule or the dead-letter list. Every move between places is
one Lua script (in ``lua/``), so a crash between two commands cannot lose or
copy a message. See DESIGN.md, "Reliable queue".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Literal

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from ferry.keys import Keys
from ferry.message import Message, MessageStatus, NewMessage, now_ms

EnqueueOutcome = Literal["queued", "existing", "full"]


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What became of one message handed to `enqueue`."""

    outcome: EnqueueOutcome
    id: str


@dataclass(frozen=True, slots=True)
class Reaped:
    returned: int
    buried: int


def _script(redis: Redis, name: str) -> AsyncScript:
    source = files("ferry").joinpath("lua", f"{name}.lua").read_text()
    return redis.register_script(source)  # type: ignore[return-value]


class Queue:
    """Every operation on the queue's keys; each is one Redis round trip."""

    def __init__(self, redis: Redis, keys: Keys | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys()
        self._enqueue = _script(redis, "enqueue")
        self._claim = _script(redis, "claim")
        self._ack = _script(redis, "ack")
        self._fail = _script(redis, "fail")
        self._promote_due = _script(redis, "promote_due")
        self._reap = _script(redis, "reap")
        self._release = _script(redis, "release")
        self._replay = _script(redis, "replay")

    async def enqueue(
        self,
        messages: Sequence[NewMessage],
        *,
        max_queue_size: int = 0,
        all_or_nothing: bool = False,
        idempotency_ttl_seconds: int = 86400,
    ) -> list[Enqueued]:
        """Store and queue messages; a full queue (past `max_queue_size`) refuses them."""
        args: list[str | bytes | int] = [
            self.keys.message_prefix,
            now_ms(),
            max_queue_size,
            self.keys.idempotency_prefix,
            idempotency_ttl_seconds,
            1 if all_or_nothing else 0,
        ]
        for message in messages:
            args += [message.id, message.body, message.content_type, message.idempotency_key]
        reply = await self._enqueue(keys=[self.keys.queue], args=args)
        return [
            Enqueued(reply[i].decode(), reply[i + 1].decode())  # type: ignore[arg-type]
            for i in range(0, len(reply), 2)
        ]

    async def claim(
        self, worker_id: str, limit: int, *, block_seconds: float = 0
    ) -> list[Message]:
        """Take up to `limit` messages into this worker's in-flight list.

        With `block_seconds`, wait that long on an empty queue (BLMOVE) for the first.
        """
        in_flight = self.keys.in_flight(worker_id)
        reply = await self._claim_now(worker_id, limit, moved="")
        if reply or block_seconds <= 0:
            return reply
        moved = await self.redis.blmove(
            self.keys.queue, in_flight, block_seconds, "RIGHT", "LEFT"
        )
        if moved is None:
            return []
        return await self._claim_now(worker_id, limit, moved=moved)

    async def _claim_now(self, worker_id: str, limit: int, moved: str | bytes) -> list[Message]:
        reply = await self._claim(
            keys=[self.keys.queue, self.keys.in_flight(worker_id)],
            args=[self.keys.message_prefix, now_ms(), limit, worker_id, moved],
        )
        return [
            Message(
                id=reply[i].decode(),
                body=reply[i + 1],
                content_type=(reply[i + 2] or b"application/octet-stream").decode(),
                attempt=int(reply[i + 3]),
                created_at_ms=int(reply[i + 4] or 0),
            )
            for i in range(0, len(reply), 5)
        ]

    async def ack(self, worker_id: str, message_ids: Sequence[str], status_ttl_seconds: int) -> None:
        """Record deliveries: out of the in-flight list, status `delivered`, bodies freed."""
        await self._ack(
            keys=[self.keys.in_flight(worker_id)],
            args=[self.keys.message_prefix, now_ms(), status_ttl_seconds, *message_ids],
        )

    async def retry_later(
        self, worker_id: str, message_id: str, due_ms: int, error: str
    ) -> bool:
        """Schedule another attempt at `due_ms`; False if this worker no longer held it."""
        return await self._settle_failure(worker_id, message_id, error, str(due_ms))

    async def bury(self, worker_id: str, message_id: str, error: str) -> bool:
        """Move to the dead-letter list; False if this worker no longer held it."""
        return await self._settle_failure(worker_id, message_id, error, "")

    async def _settle_failure(
        self, worker_id: str, message_id: str, error: str, due: str
    ) -> bool:
        moved = await self._fail(
            keys=[
                self.keys.in_flight(worker_id),
                self.keys.retry,
                self.keys.dead,
                self.keys.message(message_id),
            ],
            args=[message_id, now_ms(), error, due],
        )
        return bool(moved)

    async def promote_due(self, limit: int = 1000) -> int:
        """Queue the retries whose time has come; safe to call from every worker at once."""
        moved = await self._promote_due(
            keys=[self.keys.retry, self.keys.queue],
            args=[self.keys.message_prefix, now_ms(), limit],
        )
        return int(moved)

    async def heartbeat(self, worker_id: str, holder: str, lease_seconds: float) -> None:
        """Renew this worker's lease on its in-flight list and stay in the registry."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.heartbeat(worker_id), holder, px=int(lease_seconds * 1000))
            pipe.sadd(self.keys.workers, worker_id)
            await pipe.execute()

    async def lease_holder(self, worker_id: str) -> str | None:
        """Who holds `worker_id`'s lease now (host:pid), if anyone."""
        holder = await self.redis.get(self.keys.heartbeat(worker_id))
        return holder.decode() if holder is not None else None

    async def drop_lease(self, worker_id: str) -> None:
        await self.redis.delete(self.keys.heartbeat(worker_id))

    async def reap(self, max_returns: int) -> Reaped:
        """Give back the in-flight messages of every worker whose lease ran out."""
        returned, buried = await self._reap(
            keys=[self.keys.workers, self.keys.queue, self.keys.dead],
            args=[
                self.keys.message_prefix,
                self.keys.in_flight_prefix,
                self.keys.heartbeat_prefix,
                max_returns,
                now_ms(),
            ],
        )
        return Reaped(int(returned), int(buried))

    async def release(self, worker_id: str) -> int:
        """Give back all this worker holds (a clean shutdown) and leave the registry."""
        released = await self._release(
            keys=[
                self.keys.in_flight(worker_id),
                self.keys.queue,
                self.keys.heartbeat(worker_id),
                self.keys.workers,
            ],
            args=[self.keys.message_prefix, now_ms(), worker_id],
        )
        return int(released)

    async def replay(self, message_ids: Sequence[str]) -> int:
        """Put dead letters back on the queue with their attempts reset."""
        if not message_ids:
            return 0
        replayed = await self._replay(
            keys=[self.keys.dead, self.keys.queue],
            args=[self.keys.message_prefix, now_ms(), *message_ids],
        )
        return int(replayed)

    async def status(self, message_id: str) -> MessageStatus | None:
        fields = await self.redis.hgetall(self.keys.message(message_id))
        if not fields:
            return None
        fields.pop(b"body", None)
        return MessageStatus.from_hash(message_id, fields)

    async def size(self) -> int:
        """The backlog: `LLEN message_queue`, as the guide reads it."""
        return int(await self.redis.llen(self.keys.queue))

    async def dead_ids(self, start: int = 0, stop: int = -1) -> list[str]:
        return [raw.decode() for raw in await self.redis.lrange(self.keys.dead, start, stop)]

    async def retry_size(self) -> int:
        return int(await self.redis.zcard(self.keys.retry))

    async def dead_size(self) -> int:
        return int(await self.redis.llen(self.keys.dead))
