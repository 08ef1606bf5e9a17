"""Redis Cluster, one partition: ferry's keys in one slot, through redis-py's cluster client.

Three masters on loopback made by `redis-cli --cluster create`. With FERRY_PARTITIONS=1
(today's layout) the whole queue lives on the master that serves the slot of
`message_queue`; the other masters hold nothing of ferry's.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.crc import key_slot

from ferry.queue.connection import UnsafeRedis, check_server, connect

from tests.scaling.load import Load, delivered
from tests.scaling.servers import PASSWORD, ClusterSet
from tests.support.processes import FerryProcess, Proxy, Sink, bare_env, ferry_command, wait_until
from tests.support.servers import free_port


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
    for node in cluster_set.nodes:
        ferry_keys = [key for key in node.client(password=PASSWORD).scan_iter("*message_queue*", count=1000)]
        if node is home:
            assert b"{message_queue}:workers" in ferry_keys and len(ferry_keys) > len(answered)
        else:
            assert ferry_keys == [], f"a key of the queue on another master: {ferry_keys[:5]}"
    for worker in workers:
        assert worker.process is not None and worker.process.poll() is None, worker.log()
        assert PASSWORD not in worker.log()
    assert PASSWORD not in proxy.log()


def test_a_strict_proxy_refuses_to_start_on_a_cluster(cluster_set: ClusterSet, tmp_path: Path) -> None:
    """Strict mode's WAITAOF must follow the enqueue on the node of the queue's slot, which
    is not built for a Cluster: the proxy says so at start rather than answer weaker 202s."""
    done = subprocess.run(
        [ferry_command(), "proxy", "--insecure", "--port", str(free_port())],
        env=bare_env(
            REDIS_URL=cluster_set.url, FERRY_DURABILITY="strict", FERRY_API_KEYS="k", FERRY_HOME=str(tmp_path)
        ),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done
    assert "FERRY_DURABILITY=strict is not built for redis+cluster://" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr


def test_an_evicting_master_anywhere_in_the_cluster_is_refused(cluster_set: ClusterSet) -> None:
    """Any master may hold the queue's slot (after a reshard or with partitions): each is checked."""
    home = cluster_set.node_of_slot(key_slot(b"message_queue"))
    other = next(node for node in cluster_set.nodes if node is not home)
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
