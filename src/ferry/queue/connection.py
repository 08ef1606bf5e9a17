"""Connecting to Redis: a resilient client, and the checks before trusting a server.

The one place that turns a REDIS_URL into a client (`ferry.queue.topology` says
what a URL names): one server, the master that Sentinel names, or a Cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, ConnectionPool, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection, SentinelManagedSSLConnection
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError, SlotNotCoveredError, TimeoutError

from ferry.adapters.redis import FerryRedis, FerryRedisCluster, hiredis_packed
from ferry.queue.errors import RedisBug, WritesRefused
from ferry.queue.keys import Keys
from ferry.queue.message import now_ms
from ferry.queue.topology import Topology, parse_redis_url

# Blocking reads (BLMOVE) wait at most this long, well under the socket timeout.
SOCKET_TIMEOUT_SECONDS = 10.0
# A sentinel that does not answer within this is skipped for the next one: asking them
# is on the way to every new connection, during a failover too.
SENTINEL_TIMEOUT_SECONDS = 1.0
# How long the key that `probe_writes` sets lives.
PROBE_TTL_MS = 10_000
# A message hash whose every value is at most this long stays a listpack: about 400 bytes
# less per queued 500-byte message than the hashtable Redis makes past its default of 64.
# Not more: each change to a listpack copies it whole, which costs a 16 KiB body's claim
# and ack a third more Redis CPU (docs/storage.md, "Memory"). ferry up's Valkey sets it.
LISTPACK_VALUE_BYTES = 4096
# What a URL's query may set but ferry sets for the client (a URL's own option wins,
# as with Redis.from_url, everywhere else).
_SERVER_ONLY_OPTIONS = ("host", "port", "connection_class")


def connect(url: str, retries: int = 3) -> FerryRedis:
    """A client that retries a failed command a few times with jittered backoff.

    Longer outages surface as errors, ferry's own kinds (`ferry.queue.errors`):
    workers keep retrying them, the proxy (retries=1) answers 503 at once rather
    than keep its clients waiting. A failover behind Sentinel or in a Cluster is
    such an outage: the retries (and the callers' own) reach the new master.
    """
    topology = parse_redis_url(url)
    options = _client_options(retries, keepalive=not url.startswith("unix://"))
    if topology.kind == "sentinel":
        return _through_sentinels(topology, options)
    if topology.kind == "cluster":
        return _cluster(topology, options)
    options.update(parse_url(url))  # as Redis.from_url: the URL's own options win
    options["connection_class"] = hiredis_packed(options.get("connection_class", Connection))
    return cast(FerryRedis, FerryRedis.from_pool(ConnectionPool(**options)))


def _client_options(retries: int, keepalive: bool) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 15,
        "retry": Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), retries=retries),
        "retry_on_error": [ConnectionError, TimeoutError],
    }
    if keepalive:
        options["socket_keepalive"] = True
    return options


def _node_options(topology: Topology) -> dict[str, Any]:
    """The credentials, database, TLS and other options every data node is reached with."""
    options = dict(parse_url(topology.node_url))
    for name in _SERVER_ONLY_OPTIONS:
        options.pop(name, None)
    return options


def _through_sentinels(topology: Topology, options: dict[str, Any]) -> FerryRedis:
    """The master of `topology.service`, found through the sentinels at every new connection.

    redis-py's SentinelConnectionPool does the following: a connection lost with
    a master that died is opened again to whichever master the sentinels name
    then, and a READONLY reply (a master demoted under a live connection) drops
    the connection, so the retry asks the sentinels again instead of failing.
    """
    node_options = _node_options(topology)
    options.update(node_options)
    base = SentinelManagedSSLConnection if topology.tls else SentinelManagedConnection
    options["connection_class"] = hiredis_packed(base)
    sentinel_options: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT_SECONDS,
        "socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS,
        "retry": Retry(NoBackoff(), 0),  # a sentinel that does not answer: the next one
    }
    if topology.tls:
        sentinel_options["ssl"] = True
        sentinel_options.update({name: value for name, value in node_options.items() if name.startswith("ssl_")})
    sentinel_options.update(
        {name.removeprefix("sentinel_"): value for name, value in topology.sentinel_auth.items()}
    )
    sentinel = Sentinel(list(topology.nodes), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
    client = cast(FerryRedis, sentinel.master_for(topology.service, redis_class=FerryRedis, **options))
    client.companions = tuple(sentinel.sentinels)
    return client


def _cluster(topology: Topology, options: dict[str, Any]) -> FerryRedis:
    """A Redis Cluster client; it maps the slots from any of the nodes given.

    Typed as `FerryRedis`: the queue sends a cluster client the same commands with the
    same signatures (every key of a queue shares one slot, so every script and
    pipeline goes to one node); tests/scaling/test_cluster.py runs the queue on one.
    """
    options.update(_node_options(topology))
    options.pop("db", None)  # a cluster has database 0 only
    if topology.tls:
        options["ssl"] = True
    nodes = [ClusterNode(host, port) for host, port in topology.nodes]
    return cast(FerryRedis, FerryRedisCluster(startup_nodes=nodes, **options))


class UnsafeRedis(Exception):
    """The server may drop queued messages; the message says why and how to override."""


@dataclass
class ServerCheck:
    """What ferry found out about the server it is about to trust with messages."""

    warnings: list[str] = field(default_factory=list)


async def check_server(redis: Redis, allow_eviction: bool) -> ServerCheck:
    """Refuse an evicting maxmemory-policy (it drops queued messages); warn about no persistence,
    and about a listpack limit that stores each message in half as much memory again.

    On a Cluster every master is checked: the queue's keys may live on any of them.
    """
    check = ServerCheck()
    try:
        configs = await _server_configs(redis)
    except RedisBug:
        # Managed services often disable CONFIG; ferry cannot tell, so it says so.
        check.warnings.append("cannot read the server's CONFIG: check that maxmemory-policy is noeviction")
        return check
    for config in configs:
        _judge(config, allow_eviction, check)
    check.warnings = list(dict.fromkeys(check.warnings))  # each master may say the same
    return check


async def _server_configs(redis: Redis) -> list[dict[Any, Any]]:
    """maxmemory-policy, appendonly, save and the hash listpack limit (Redis 6.2 calls it
    ziplist) of the server, or of each of a Cluster's masters."""
    names = ("maxmemory-policy", "appendonly", "save", "hash-max-listpack-value", "hash-max-ziplist-value")
    if isinstance(redis, RedisCluster):
        per_node: dict[str, dict[Any, Any]] = {}
        for name in names:
            for node, values in (await redis.config_get(name, target_nodes=RedisCluster.PRIMARIES)).items():
                per_node.setdefault(node, {}).update(values)
        return list(per_node.values())
    config: dict[Any, Any] = {}
    for name in names:
        config.update(await redis.config_get(name))
    return [config]


def _judge(config: dict[Any, Any], allow_eviction: bool, check: ServerCheck) -> None:
    policy = _setting(config, "maxmemory-policy")
    if policy and policy != "noeviction":
        message = (
            f"Redis maxmemory-policy is {policy}: it may evict queued messages. "
            "Set it to noeviction, or FERRY_ALLOW_EVICTING_REDIS=true to run anyway"
        )
        if not allow_eviction:
            raise UnsafeRedis(message)
        check.warnings.append(message)
    if _setting(config, "appendonly") != "yes" and not _setting(config, "save").strip():
        check.warnings.append(
            "Redis keeps nothing on disk (appendonly no, no save points): "
            "a Redis restart loses every queued message"
        )
    listpack = _setting(config, "hash-max-listpack-value") or _setting(config, "hash-max-ziplist-value")
    if listpack.isdigit() and int(listpack) < LISTPACK_VALUE_BYTES:
        check.warnings.append(
            f"Redis hash-max-listpack-value is {listpack}: each message whose body is longer is kept in a "
            f"hashtable, about 400 bytes more than a listpack; set it to {LISTPACK_VALUE_BYTES} as ferry up's "
            "Valkey does (docs/storage.md)"
        )


def _setting(config: dict[Any, Any], name: str) -> str:
    """One value of a CONFIG GET reply, whether the client decodes replies or not ('' if absent)."""
    return _text(config.get(name.encode(), config.get(name, b"")))


class StrictDurabilityUnsupported(UnsafeRedis):
    """FERRY_DURABILITY=strict needs WAITAOF and an append-only file."""


async def check_strict_durability(
    redis: Redis, replicas: int = 0, queues: Sequence[str] = (Keys().queue,)
) -> list[str]:
    """Strict mode fsyncs every acknowledged message with WAITAOF (Redis 7.2+, Valkey), on the
    master that holds the queue: on a Cluster, the master of each queue's slot.

    Returns warnings: a master with fewer connected replicas than `replicas` now, whose
    strict enqueues are answered 503 until that many are connected.
    """
    warnings = []
    for master, (fsynced, info) in (await _probe_masters(redis, queues)).items():
        if isinstance(fsynced, RedisBug):  # an unknown command, or no append-only file
            if "replica" in str(fsynced).lower():
                # A replica (a demoted master the sentinels still named a moment ago) refuses
                # WAITAOF: writes refused for now, as READONLY is, not a Redis without WAITAOF.
                raise WritesRefused(str(fsynced))
            raise StrictDurabilityUnsupported(
                "FERRY_DURABILITY=strict needs WAITAOF with appendonly yes (Redis 7.2+ or Valkey): "
                f"{fsynced}"
            )
        if isinstance(fsynced, Exception):
            raise fsynced
        connected = int(info.get("connected_slaves", 0))
        if connected < replicas:
            warnings.append(
                f"FERRY_STRICT_REPLICAS={replicas} but {master} has {connected} connected "
                f"replica{'' if connected == 1 else 's'}: strict messages are answered 503 "
                f"until {replicas} are connected"
            )
    return warnings


async def _probe_masters(
    redis: Redis, queues: Sequence[str]
) -> dict[str, tuple[Any, dict[str, Any]]]:
    """A short WAITAOF's reply (or error) and INFO replication, from each master of `queues`."""
    probe = ("WAITAOF", 1, 0, 100)
    if isinstance(redis, FerryRedisCluster):
        probed: dict[str, tuple[Any, dict[str, Any]]] = {}
        for queue in queues:
            # EXISTS first: a keyed command, which a node that does not serve the slot redirects.
            _, fsynced, info = await redis.pipeline_on_master_of(
                queue, ("EXISTS", queue), probe, ("INFO", "replication")
            )
            probed[_master_name(redis, queue)] = (fsynced, info if isinstance(info, dict) else {})
        return probed
    try:
        fsynced = await redis.execute_command(*probe)  # type: ignore[no-untyped-call]
    except RedisBug as error:
        return {"the master": (error, {})}
    return {"the master": (fsynced, await redis.info("replication"))}


def _master_name(redis: FerryRedisCluster, queue: str) -> str:
    """The master that serves `queue` in the slots just mapped, for a warning."""
    try:
        node = redis.get_node_from_key(queue)
    except SlotNotCoveredError:  # mapped again meanwhile
        node = None
    return f"the master {node.name}" if node is not None else f"the master of {queue}"


async def probe_writes(redis: Redis, key: str) -> None:
    """A tiny write that the server refuses when it would refuse a message.

    PING succeeds on a server out of memory or on a replica: only a write tells.
    Raises WritesRefused (OOM, MISCONF, READONLY, NOREPLICAS) or RedisUnavailable.
    """
    await redis.set(key, now_ms(), px=PROBE_TTL_MS)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
