"""Scaling a running pool from anywhere: `ferry workers scale --to N`, `+1`, `-1`.

The channel is Redis, not a signal nor a local socket: Windows has no SIGTTIN, a
local socket would need a port file, a permission story of its own and would
reach only this machine, while every pool already talks to Redis with its
credentials. Each pool (id `host:pid`) keeps a hash that a heartbeat refreshes
(size, wanted, TTL a few seconds) and is listed in `{message_queue}:pools`; a
request is a JSON object LPUSHed on its control list, which the pool BLPOPs.
The signals stay on POSIX as the shortcut for one machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from ferry.logs import get_logger
from ferry.queue.errors import RedisFailure
from ferry.queue.keys import Keys

log = get_logger(__name__)

HEARTBEAT_TTL_SECONDS = 10
BLOCK_SECONDS = 1
REDIS_AWAY_PAUSE_SECONDS = 1.0


def pool_id() -> str:
    """This process's pool id: unique across hosts, the `pool` of its autoscaler's decisions."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Request:
    """Scale to `to` workers, or by `step` from what the pool wants now."""

    to: int | None = None
    step: int = 0

    def target(self, wanted: int) -> int:
        return max(0, self.to if self.to is not None else wanted + self.step)

    def encode(self) -> str:
        return json.dumps({"to": self.to} if self.to is not None else {"step": self.step})

    @staticmethod
    def decode(raw: bytes | str) -> Request:
        """ValueError when it is no request."""
        value = json.loads(raw)
        if isinstance(value, dict) and isinstance(value.get("to"), int) and value["to"] >= 0:
            return Request(to=value["to"])
        if isinstance(value, dict) and isinstance(value.get("step"), int):
            return Request(step=value["step"])
        raise ValueError(f"not a scaling request: {raw!r}")


@dataclass
class PoolControl:
    """The pool's side: announce itself, and apply each request that arrives."""

    redis: Redis
    keys: Keys
    pool: str
    size: Callable[[], int]  # workers running now
    wanted: Callable[[], int]  # workers asked for (the target of the last change)
    scale: Callable[[int], None]  # starts a change to a target (the pool clamps it to its limits)
    applied: int = 0
    _away: bool = False

    async def run(self) -> None:
        """Until cancelled; Redis away is waited out, a bad request logged and dropped, any
        other failure logged with its traceback."""
        try:
            while True:
                try:
                    await self._heartbeat()
                    popped = await self.redis.blpop([self.keys.pool_control(self.pool)], BLOCK_SECONDS)  # type: ignore[misc]
                    if self._away:
                        log.info("pool control channel reaches redis again")
                        self._away = False
                    if popped is not None:
                        await self._apply(popped[1])
                except RedisFailure as error:
                    if not self._away:  # once an outage, not each second of it
                        log.warning("pool control channel cannot reach redis", error=str(error))
                    self._away = True
                    await asyncio.sleep(REDIS_AWAY_PAUSE_SECONDS)
                except Exception as error:  # never ends in silence: logged, and the channel goes on
                    log.error("pool control channel failed unexpectedly, going on", error=str(error), exc_info=error)
                    await asyncio.sleep(REDIS_AWAY_PAUSE_SECONDS)
        finally:
            await self._sign_off()

    async def _apply(self, raw: bytes) -> None:
        try:
            request = Request.decode(raw)
        except ValueError as error:
            log.warning("ignoring a scaling request", error=str(error))
            return
        target = request.target(self.wanted())
        log.info("scaling by request", workers_from=self.wanted(), workers_to=target, request=request.encode())
        self.scale(target)
        self.applied += 1
        await self._heartbeat()

    async def _heartbeat(self) -> None:
        key = self.keys.pool(self.pool)
        host, _, pid = self.pool.rpartition(":")
        fields = {"host": host, "pid": pid, "size": self.size(), "wanted": self.wanted(), "applied": self.applied,
                  "heartbeat_at": time.time()}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, HEARTBEAT_TTL_SECONDS)
            pipe.sadd(self.keys.pools, self.pool)
            await pipe.execute()

    async def _sign_off(self) -> None:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.keys.pool(self.pool), self.keys.pool_control(self.pool))
                pipe.srem(self.keys.pools, self.pool)
                await pipe.execute()
        except RedisFailure as error:  # its hash expires by itself
            log.warning("pool could not sign off", error=str(error))


@dataclass(frozen=True)
class PoolState:
    pool: str
    host: str
    size: int
    wanted: int
    applied: int  # requests the pool has applied so far


class NoSuchPool(Exception):
    """No pool to send the request to, or more than one to choose from; the message says which."""


async def running_pools(redis: Redis, keys: Keys) -> list[PoolState]:
    """The pools whose heartbeat is alive (stale ids are dropped from the set)."""
    ids = sorted(member.decode() for member in await redis.smembers(keys.pools))  # type: ignore[misc]
    pools = []
    for pool in ids:
        fields = await redis.hgetall(keys.pool(pool))  # type: ignore[misc]
        if not fields:
            await redis.srem(keys.pools, pool)  # type: ignore[misc]
            continue
        text = {name.decode(): value.decode() for name, value in fields.items()}
        number = {name: int(text.get(name, 0)) for name in ("size", "wanted", "applied")}
        pools.append(PoolState(pool, text.get("host", ""), number["size"], number["wanted"], number["applied"]))
    return pools


def choose_pool(pools: list[PoolState], wanted: str | None) -> PoolState:
    """The pool named, or the only one on this host, or the only one at all."""
    if wanted is not None:
        for state in pools:
            if state.pool == wanted:
                return state
        raise NoSuchPool(f"no running pool {wanted} (running: {', '.join(p.pool for p in pools) or 'none'})")
    here = [state for state in pools if state.host == socket.gethostname()] or pools
    if len(here) == 1:
        return here[0]
    if not here:
        raise NoSuchPool("no running pool of workers (start one with `ferry workers start`)")
    raise NoSuchPool(f"several pools run, name one with --pool: {', '.join(p.pool for p in here)}")


async def ask_pool(redis: Redis, keys: Keys, state: PoolState, request: Request, timeout_seconds: float) -> int | None:
    """Send `request`, then wait until the pool has applied it and runs what it then wants:
    that count (the pool may have clamped it to its autoscaling limits), or None on timeout."""
    await redis.rpush(keys.pool_control(state.pool), request.encode())  # type: ignore[misc]
    await redis.expire(keys.pool_control(state.pool), HEARTBEAT_TTL_SECONDS * 6)
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        size, wanted, applied = await redis.hmget(keys.pool(state.pool), ["size", "wanted", "applied"])  # type: ignore[misc]
        if applied is not None and int(applied) > state.applied and int(size) == int(wanted):
            return int(size)
        await asyncio.sleep(0.2)
    return None
