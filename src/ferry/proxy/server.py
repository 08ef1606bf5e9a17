"""Running the proxy: checks before listening, TLS, uvicorn processes, metrics across them."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import ssl
import tempfile

from starlette.types import ASGIApp

from ferry import platform
from ferry.adapters.uvicorn import REFUSING_AT_MOST, Limits, ProxyConfig, ProxyHttpProtocol, serve
from ferry.logs import configure, get_logger
from ferry.processes.redis_url import resolve_redis_url
from ferry.proxy.auth import ApiKeys, NoApiKeys
from ferry.queue.connection import (
    UnsafeRedis,
    check_server,
    check_strict_durability,
    connect,
)
from ferry.queue.errors import RedisUnavailable, WritesRefused
from ferry.queue.keys import Keys, partition_names
from ferry.settings import Settings

log = get_logger(__name__)

# Descriptors a proxy process needs besides its clients': Redis connections, the
# listening socket, logs, the metrics files.
DESCRIPTOR_RESERVE = 128


class ProxyRefused(Exception):
    """The proxy will not start; the message says why in one line."""


class ProxyApp:
    """The app factory of each uvicorn process, holding the settings its parent resolved.

    uvicorn's multiprocess supervisor pickles its config, this factory in it, through
    the pipe it spawns each process with: the settings (API keys, the Redis URL and its
    password) reach the processes without passing through their environment, which
    anything they start would inherit.
    """

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.settings = settings
        self.redis_url = redis_url

    def __call__(self) -> ASGIApp:
        from ferry.proxy.app import create_app

        configure(self.settings.log_level)
        keep_large_buffers_returnable()
        return create_app(self.settings, self.redis_url)


# The size from which glibc maps a buffer of its own.
MMAP_THRESHOLD_BYTES = 128 * 1024


def keep_large_buffers_returnable() -> None:
    """Large buffers (bodies, TLS reads) go back to the system when freed.

    glibc maps an allocation of 128 KiB or more on its own and unmaps it when freed,
    but each such buffer freed raises that threshold (up to 32 MiB), after which they
    come from the heap, where freed memory mostly stays: after slow clients held
    hundreds of half-read 1 MiB bodies, the proxy kept their RSS for good. Fixing the
    threshold keeps them returnable; no allocation of a small message's request is
    that large. Elsewhere than glibc, nothing is done.
    """
    platform.fix_mmap_threshold(MMAP_THRESHOLD_BYTES)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def preflight(settings: Settings, insecure: bool) -> None:
    """Everything that must hold before the proxy listens."""
    if settings.proxy_certfile is None and not is_loopback(settings.proxy_host) and not insecure:
        raise ProxyRefused(
            f"refusing to serve plain HTTP on {settings.proxy_host}: give --certfile and --keyfile "
            "(PROXY_CERTFILE, PROXY_KEYFILE), or --insecure"
        )
    try:
        ApiKeys.from_settings(settings)
    except (NoApiKeys, ValueError) as error:
        raise ProxyRefused(str(error)) from None


async def check_redis(settings: Settings, redis_url: str) -> None:
    """Refuse an unsafe Redis now; a Redis that is down only means 503s until it is back."""
    redis = connect(redis_url, retries=0)
    try:
        check = await check_server(redis, settings.allow_evicting_redis)
        if settings.durability == "strict":
            queues = partition_names(Keys().queue, settings.partitions)  # the master of each partition
            check.warnings += await check_strict_durability(redis, settings.strict_replicas, queues)
    except RedisUnavailable as error:
        log.warning("redis unavailable at start: answering 503 until it is back", error=str(error))
        return
    except WritesRefused as error:
        log.warning("redis refuses writes at start: answering 503 until it takes them", error=str(error))
        return
    except UnsafeRedis as error:
        raise ProxyRefused(str(error)) from None
    finally:
        await redis.aclose()
    for warning in check.warnings:
        log.warning("redis setup", problem=warning)


def connections_that_fit(max_connections: int) -> int:
    """FERRY_MAX_CONNECTIONS, or fewer if this process's descriptors cannot hold them.

    Each connection is a descriptor (and so is each being refused, up to
    REFUSING_AT_MOST more): the soft limit is raised towards the hard one if it is short,
    and where the hard one is short too the cap comes down to what fits, with a warning.
    Past the limit accept() would fail and clients be reset instead of answered 503.
    The proxy's processes inherit the limit.
    """
    needed = max_connections + REFUSING_AT_MOST + DESCRIPTOR_RESERVE
    soft = platform.raise_descriptor_limit(needed)
    if soft is None or soft >= needed:
        return max_connections
    fitted = max(1, soft - REFUSING_AT_MOST - DESCRIPTOR_RESERVE)
    log.warning(
        "FERRY_MAX_CONNECTIONS lowered to what the descriptor limit holds (raise ulimit -n)",
        max_connections=max_connections,
        lowered_to=fitted,
        descriptor_limit=soft,
    )
    return fitted


def limits(settings: Settings) -> Limits:
    return Limits(
        head_timeout_seconds=settings.head_timeout_seconds,
        body_timeout_seconds=settings.body_timeout_seconds,
        keep_alive_seconds=settings.keep_alive_seconds,
        max_connections=connections_that_fit(settings.max_connections),
        body_buffer_bytes=settings.body_buffer_bytes,
    )


def run_proxy(settings: Settings, insecure: bool = False) -> None:
    """Serve until SIGTERM/SIGINT; uvicorn lets requests in flight finish first."""
    configure(settings.log_level)
    preflight(settings, insecure)
    redis_url, embedded = resolve_redis_url(settings)
    # A fresh directory per run: stale files of an earlier run would add to the sums.
    metrics_dir = tempfile.mkdtemp(prefix="ferry-proxy-metrics-")
    try:
        asyncio.run(check_redis(settings, redis_url))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # no secret; prometheus_client reads it there
        config = ProxyConfig(
            ProxyApp(settings, redis_url),
            factory=True,
            host=settings.proxy_host,
            port=settings.proxy_port,
            workers=settings.proxy_workers,
            loop=platform.UVICORN_LOOP,
            http=ProxyHttpProtocol,
            ws="none",  # ferry serves no WebSockets
            lifespan="on",
            access_log=False,  # a log line per message would cost more than storing it
            # The client address (in the logs) is X-Forwarded-For's only from a trusted load
            # balancer; uvicorn's middleware takes the nearest address no trusted proxy added.
            # Trusting none, the headers are not even parsed (X-Real-IP never is).
            proxy_headers=bool(settings.trusted_proxies),
            forwarded_allow_ips=settings.trusted_proxies or None,
            log_level=settings.log_level.lower(),
            log_config=None,  # uvicorn's own lines go through ferry's log set-up (ferry.logs)
            ssl_certfile=settings.proxy_certfile,
            ssl_keyfile=settings.proxy_keyfile,
            ssl_ca_certs=settings.proxy_client_ca_file,
            ssl_cert_reqs=ssl.CERT_REQUIRED if settings.proxy_client_ca_file else ssl.CERT_NONE,
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None,
            limits=limits(settings),  # timeouts, caps on connections and on bodies held
        )
        log.info(
            "proxy listening",
            url=f"{'https' if settings.proxy_certfile else 'http'}://{settings.proxy_host}:{settings.proxy_port}",
            workers=settings.proxy_workers,
        )
        serve(config)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        if embedded is not None:
            embedded.stop()
