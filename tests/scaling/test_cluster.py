"""Redis Cluster, one partition: ferry's keys in one slot, through redis-py's cluster client.

Three masters with a replica each on loopback, made by `redis-cli --cluster create`
(the session's, shared with other modules: tests/scaling/conftest.py).
With FERRY_PARTITIONS=1 (today's layout) the whole queue lives on the master that
serves the slot of `message_queue`; the other masters hold nothing of ferry's.
Strict mode's WAITAOF goes down the connection of the enqueue, to the master of the
slot of the queue's own keys, following a reshard (ASK, then MOVED) and loading its
script where it is missing. The tests run in file order: the reshard moves the
queue's slot, and every later test asks where it is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from redis.crc import key_slot

from ferry.adapters.redis import FerryRedisCluster
from ferry.queue import Queue
from ferry.queue.connection import UnsafeRedis, check_server, connect
from ferry.queue.keys import Keys
from ferry.queue.message import NewMessage, new_message_id
from tests.scaling.load import Load, delivered, post_each
from tests.scaling.servers import PASSWORD, ClusterSet, Node
from tests.support.processes import FerryProcess, Proxy, Sink, wait_until

QUEUE_SLOT = key_slot(b"message_queue")


def test_messages_through_a_three_master_cluster_are_all_delivered(
    cluster_set: ClusterSet,
    start_sink: Callable[..., Sink],
    start_proxy: Callable[..., Proxy],
    start_worker: Callable[..., FerryProcess],
) -> None:
    sink = start_sink()
    url = cluster_set.url
    workers = [start_worker(url, sink.url, WORKER_ID=f"cluster-{index}") for index in range(2)]
    proxy = start_proxy(url)
    load = Load(proxy, "cluster", threads=2, interval_seconds=0.01)
    load.start()
    time.sleep(2.0)
    load.stop()

    assert not load.unexpected and not load.refusals, (load.unexpected[:5], load.refusals)
    answered = {answer.id for answer in load.answers}
    assert len(answered) >= 50
    wait_until(lambda: answered <= delivered(sink).keys(), timeout=30)

    home = cluster_set.node_of_slot(key_slot(b"message_queue"))
    for node in cluster_set.masters():
        ferry_keys = [key for key in node.client(password=PASSWORD).scan_iter("*message_queue*", count=1000)]
        if node is home:
            assert b"{message_queue}:workers" in ferry_keys and len(ferry_keys) > len(answered)
        else:
            assert ferry_keys == [], f"a key of the queue on another master: {ferry_keys[:5]}"
    for worker in workers:
        assert worker.process is not None and worker.process.poll() is None, worker.log()
        assert PASSWORD not in worker.log()
    assert PASSWORD not in proxy.log()


def test_an_evicting_master_anywhere_in_the_cluster_is_refused(cluster_set: ClusterSet) -> None:
    """Any master may hold the queue's slot (after a reshard or with partitions): each is checked."""
    home = cluster_set.node_of_slot(key_slot(b"message_queue"))
    other = next(node for node in cluster_set.masters() if node is not home)
    other.client(password=PASSWORD).config_set("maxmemory-policy", "allkeys-lru")

    async def check() -> None:
        client = connect(cluster_set.url)
        try:
            await check_server(client, allow_eviction=False)
        finally:
            await client.aclose()

    try:
        with pytest.raises(UnsafeRedis, match="maxmemory-policy is allkeys-lru"):
            asyncio.run(check())
    finally:
        other.client(password=PASSWORD).config_set("maxmemory-policy", "noeviction")
    asyncio.run(check())


def _stat(node: Node, section: str, name: str) -> int:
    """A count from INFO commandstats (`cmdstat_waitaof`) or errorstats (`errorstat_MOVED`)."""
    stats = node.client(password=PASSWORD).info(section)
    return int(stats.get(name, {}).get("calls" if section == "commandstats" else "count", 0))


def _waits(node: Node) -> int:
    return _stat(node, "commandstats", "cmdstat_waitaof")


def _message(key: str = "") -> NewMessage:
    return NewMessage(new_message_id(), b"{}", "application/json", key, "", "sender")


def _stored_on(node: Node, keys: Keys, message: NewMessage) -> bool:
    return node.client(password=PASSWORD).hget(keys.message_prefix + message.id, "body") == message.body


def test_a_strict_proxy_answers_202_once_the_queues_master_and_its_replica_fsynced(
    cluster_set: ClusterSet,
    start_sink: Callable[..., Sink],
    start_proxy: Callable[..., Proxy],
    start_worker: Callable[..., FerryProcess],
) -> None:
    """Every WAITAOF goes to the master of the queue's slot (the only one whose replicas
    can confirm the message), none to the others; the messages are delivered."""
    home = cluster_set.node_of_slot(QUEUE_SLOT)
    others = [node for node in cluster_set.masters() if node is not home]
    waits_before = {node.port: _waits(node) for node in cluster_set.masters()}
    sink = start_sink()
    start_worker(cluster_set.url, sink.url, WORKER_ID="strict-cluster")
    proxy = start_proxy(cluster_set.url, FERRY_DURABILITY="strict", FERRY_STRICT_REPLICAS=1)
    post_each(proxy, sink, 5)
    assert _waits(home) - waits_before[home.port] >= 5
    for node in others:
        assert _waits(node) == waits_before[node.port]
    assert "FERRY_STRICT_REPLICAS" not in proxy.log() and PASSWORD not in proxy.log()


def test_a_strict_proxy_with_a_partition_per_master_waits_on_each_partitions_master(
    cluster_set: ClusterSet,
    start_sink: Callable[..., Sink],
    start_proxy: Callable[..., Proxy],
    start_worker: Callable[..., FerryProcess],
) -> None:
    """FERRY_PARTITIONS=3: each partition's slot on another master, and each strict enqueue's
    WAITAOF on the master of its own partition, so every master confirms its share."""
    waits_before = {node.port: _waits(node) for node in cluster_set.masters()}
    sink = start_sink()
    start_worker(cluster_set.url, sink.url, WORKER_ID="partitions", FERRY_PARTITIONS=3)
    proxy = start_proxy(cluster_set.url, FERRY_DURABILITY="strict", FERRY_STRICT_REPLICAS=1, FERRY_PARTITIONS=3)
    post_each(proxy, sink, 6)
    for node in cluster_set.masters():
        assert _waits(node) > waits_before[node.port], f"no WAITAOF on the master on port {node.port}"
    assert "FERRY_STRICT_REPLICAS" not in proxy.log()


def test_a_strict_proxy_warns_at_start_when_the_queues_master_has_fewer_replicas(
    cluster_set: ClusterSet, start_proxy: Callable[..., Proxy]
) -> None:
    home = cluster_set.node_of_slot(QUEUE_SLOT)
    proxy = start_proxy(cluster_set.url, FERRY_DURABILITY="strict", FERRY_STRICT_REPLICAS=2)
    assert (
        f"FERRY_STRICT_REPLICAS=2 but the master 127.0.0.1:{home.port} has 1 connected replica: "
        "strict messages are answered 503 until 2 are connected"
    ) in proxy.log()
    status, headers, body = proxy.post(b'{"n": 1}')
    assert status == 503 and body["error"] == "redis_unavailable" and "retry-after" in headers, body
    assert "fsynced by 1 of 2 replicas" in proxy.log()


def test_one_connection_carries_every_command_to_the_master_of_the_slot(cluster_set: ClusterSet) -> None:
    """Canary of the one reach into redis-py's cluster internals (src/ferry/adapters/redis.py):
    the commands go down one connection, of the master serving the key's slot."""
    home = cluster_set.node_of_slot(QUEUE_SLOT)

    async def ids() -> tuple[list[Any], set[int]]:
        client = connect(cluster_set.url)
        try:
            assert isinstance(client, FerryRedisCluster)
            replies = await client.pipeline_on_master_of("message_queue", ("CLIENT", "ID"), ("CLIENT", "ID"))
            return replies, {int(each["id"]) for each in home.client(password=PASSWORD).client_list()}
        finally:
            await client.aclose()

    (first, second), home_clients = asyncio.run(ids())
    assert first == second
    assert first in home_clients, "not a connection of the slot's master"


def test_a_strict_enqueue_of_another_queue_waits_on_that_queues_master_and_loads_its_script_there(
    cluster_set: ClusterSet,
) -> None:
    """A queue of another name (a partition) lives on the master of its own slot: the
    strict enqueue and its WAITAOF go there, and the script, flushed there, is loaded."""
    home = cluster_set.node_of_slot(QUEUE_SLOT)
    names = (f"message_queue:{n}" for n in range(1000))
    name = next(name for name in names if cluster_set.node_of_slot(key_slot(name.encode())) is not home)
    keys = Keys(queue=name)
    there = cluster_set.node_of_slot(key_slot(name.encode()))
    there.client(password=PASSWORD).script_flush()
    waits, noscripts = _waits(there), _stat(there, "errorstats", "errorstat_NOSCRIPT")
    message = _message()

    async def enqueue() -> str:
        client = connect(cluster_set.url)
        try:
            return (await Queue(client, keys).enqueue([message], fsync=True, replicas=1))[0].outcome
        finally:
            await client.aclose()

    assert asyncio.run(enqueue()) == "queued"
    assert _stored_on(there, keys, message)
    assert _stat(there, "errorstats", "errorstat_NOSCRIPT") == noscripts + 1
    assert _waits(there) > waits


def test_a_strict_enqueue_follows_a_reshard_of_the_queues_slot(cluster_set: ClusterSet) -> None:
    """The queue's slot moves to another master under a client that mapped it before: while
    it is moving (every key moved, the slot not yet handed over) the old master answers ASK,
    after it MOVED. Each time the whole enqueue and its WAITAOF go to the new master, down
    one connection, and the message is stored and confirmed there."""
    source = cluster_set.node_of_slot(QUEUE_SLOT)
    target = next(node for node in cluster_set.masters() if node is not source)
    keys = Keys()
    before, during, after = _message(), _message(), _message()

    async def run() -> None:
        client = connect(cluster_set.url)
        try:
            queue = Queue(client)
            # The client maps the slot on the source.
            assert (await queue.enqueue([before], fsync=True, replicas=1))[0].outcome == "queued"
            _migrate_keys(source, target, QUEUE_SLOT)
            asks, waits = _stat(source, "errorstats", "errorstat_ASK"), _waits(target)
            assert (await queue.enqueue([during], fsync=True, replicas=1))[0].outcome == "queued"
            assert _stat(source, "errorstats", "errorstat_ASK") > asks
            assert _waits(target) == waits + 1
            _hand_over(cluster_set, target, QUEUE_SLOT)
            moved = _stat(source, "errorstats", "errorstat_MOVED")
            assert (await queue.enqueue([after], fsync=True, replicas=1))[0].outcome == "queued"
            assert _stat(source, "errorstats", "errorstat_MOVED") > moved
            assert _waits(target) == waits + 2
        finally:
            await client.aclose()

    asyncio.run(run())
    assert cluster_set.node_of_slot(QUEUE_SLOT) is target
    for message in (before, during, after):
        assert _stored_on(target, keys, message)
    # Back where it was: the next module sharing the session's Cluster finds it as made.
    _migrate_keys(target, source, QUEUE_SLOT)
    _hand_over(cluster_set, source, QUEUE_SLOT)


def _migrate_keys(source: Node, target: Node, slot: int) -> None:
    """The first half of a reshard, as `redis-cli --cluster reshard` does it: the slot
    importing on the target, migrating on the source, and every key of it moved."""
    source_id = source.client(password=PASSWORD).execute_command("CLUSTER", "MYID").decode()
    target_id = target.client(password=PASSWORD).execute_command("CLUSTER", "MYID").decode()
    target.client(password=PASSWORD).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.client(password=PASSWORD).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    while keys := source.client(password=PASSWORD).execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        source.client(password=PASSWORD).execute_command(
            "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "AUTH", PASSWORD, "KEYS", *keys
        )


def _hand_over(cluster_set: ClusterSet, target: Node, slot: int) -> None:
    """The second half: every master told that the target serves the slot now."""
    target_id = target.client(password=PASSWORD).execute_command("CLUSTER", "MYID").decode()
    for node in [target, *(node for node in cluster_set.masters() if node is not target)]:
        node.client(password=PASSWORD).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    wait_until(lambda: all(cluster_set.node_of_slot(slot, asked) is target for asked in cluster_set.live()))
