"""Connecting to Redis: a resilient client, and the checks before trusting a server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.connection import Connection, ConnectionPool, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError, TimeoutError

from ferry.adapters.redis import FerryRedis, hiredis_packed
from ferry.queue.errors import RedisBug
from ferry.queue.message import now_ms

# Blocking reads (BLMOVE) wait at most this long, well under the socket timeout.
SOCKET_TIMEOUT_SECONDS = 10.0
# How long the key that `probe_writes` sets lives.
PROBE_TTL_MS = 10_000


def connect(url: str, retries: int = 3) -> FerryRedis:
    """A client that retries a failed command a few times with jittered backoff.

    Longer outages surface as errors, ferry's own kinds (`ferry.queue.errors`):
    workers keep retrying them, the proxy (retries=1) answers 503 at once rather
    than keep its clients waiting.
    """
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 15,
        "retry": Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), retries=retries),
        "retry_on_error": [ConnectionError, TimeoutError],
    }
    if not url.startswith("unix://"):
        options["socket_keepalive"] = True
    options.update(parse_url(url))  # as Redis.from_url: the URL's own options win
    options["connection_class"] = hiredis_packed(options.get("connection_class", Connection))
    return cast(FerryRedis, FerryRedis.from_pool(ConnectionPool(**options)))


class UnsafeRedis(Exception):
    """The server may drop queued messages; the message says why and how to override."""


@dataclass
class ServerCheck:
    """What ferry found out about the server it is about to trust with messages."""

    warnings: list[str] = field(default_factory=list)


async def check_server(redis: Redis, allow_eviction: bool) -> ServerCheck:
    """Refuse an evicting maxmemory-policy (it drops queued messages); warn about no persistence."""
    check = ServerCheck()
    try:
        config = await redis.config_get("maxmemory-policy")
        config.update(await redis.config_get("appendonly"))
        config.update(await redis.config_get("save"))
    except RedisBug:
        # Managed services often disable CONFIG; ferry cannot tell, so it says so.
        check.warnings.append("cannot read the server's CONFIG: check that maxmemory-policy is noeviction")
        return check
    policy = _text(config.get(b"maxmemory-policy", config.get("maxmemory-policy", b"")))
    if policy and policy != "noeviction":
        message = (
            f"Redis maxmemory-policy is {policy}: it may evict queued messages. "
            "Set it to noeviction, or FERRY_ALLOW_EVICTING_REDIS=true to run anyway"
        )
        if not allow_eviction:
            raise UnsafeRedis(message)
        check.warnings.append(message)
    appendonly = _text(config.get(b"appendonly", config.get("appendonly", b"")))
    save = _text(config.get(b"save", config.get("save", b"")))
    if appendonly != "yes" and not save.strip():
        check.warnings.append(
            "Redis keeps nothing on disk (appendonly no, no save points): "
            "a Redis restart loses every queued message"
        )
    return check


class StrictDurabilityUnsupported(UnsafeRedis):
    """FERRY_DURABILITY=strict needs WAITAOF and an append-only file."""


async def check_strict_durability(redis: Redis) -> None:
    """Strict mode fsyncs every acknowledged message with WAITAOF (Redis 7.2+, Valkey)."""
    try:
        await redis.execute_command("WAITAOF", 1, 0, 100)  # type: ignore[no-untyped-call]
    except RedisBug as error:  # an unknown command, or no append-only file
        raise StrictDurabilityUnsupported(
            f"FERRY_DURABILITY=strict needs WAITAOF with appendonly yes (Redis 7.2+ or Valkey): {error}"
        ) from None


async def probe_writes(redis: Redis, key: str) -> None:
    """A tiny write that the server refuses when it would refuse a message.

    PING succeeds on a server out of memory or on a replica: only a write tells.
    Raises WritesRefused (OOM, MISCONF, READONLY, NOREPLICAS) or RedisUnavailable.
    """
    await redis.set(key, now_ms(), px=PROBE_TTL_MS)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
