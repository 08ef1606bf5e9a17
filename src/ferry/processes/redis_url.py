"""Which Redis a command talks to: REDIS_URL, or the embedded Valkey of FERRY_HOME."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ferry.processes.embedded import EmbeddedValkey, start_or_share
from ferry.queue import Partitions
from ferry.queue.connection import connect
from ferry.queue.errors import RedisBug, RedisUnavailable, WritesRefused
from ferry.settings import Settings, redacted_url

T = TypeVar("T")


def resolve_redis_url(settings: Settings) -> tuple[str, EmbeddedValkey | None]:
    """REDIS_URL, or the embedded Valkey of FERRY_HOME (started if this is the first process)."""
    if settings.redis_url:
        return settings.redis_url, None
    return start_or_share(settings.home)


class NoRedis(Exception):
    """No Redis to administer: none configured and none running, or it does not answer."""


def running_redis_url(settings: Settings) -> str:
    """REDIS_URL, or the embedded Valkey of FERRY_HOME if one already runs; never starts one.

    For commands that look at a stack rather than run one: a fresh, empty server
    would only hide a wrong FERRY_HOME behind an empty answer.
    """
    if settings.redis_url:
        return settings.redis_url
    url = EmbeddedValkey(settings.home).running_url()
    if url is None:
        raise NoRedis(
            f"no Redis: set REDIS_URL or start ferry (no embedded Valkey runs in FERRY_HOME={settings.home})"
        )
    return url


def run_on_queue(settings: Settings, operation: Callable[[Partitions], Awaitable[T]]) -> T:
    """One operation on the queue of the running Redis, from synchronous code (admin commands)."""
    url = running_redis_url(settings)

    async def run() -> T:
        redis = connect(url, retries=1)
        try:
            return await operation(Partitions(redis))  # finds the partitions in their record
        finally:
            await redis.aclose()

    try:
        return asyncio.run(run())
    except RedisUnavailable as error:
        raise NoRedis(f"Redis at {redacted_url(url)} does not answer: {error}") from None
    except WritesRefused as error:
        raise NoRedis(f"Redis at {redacted_url(url)} refuses writes: {error}") from None
    except RedisBug as error:  # one line for the operator; the cause is in the message
        raise NoRedis(f"Redis at {redacted_url(url)} answered what ferry cannot use: {error}") from None
