"""Canary: redis-py still packs commands through `pack_command`, and hiredis packs them as it does;
the cluster client's internals that ferry uses are still there; a lane (`FerryRedis.lane`)
still reads the replies of its own commands and no others.

If a redis-py release renames the hook or stops calling it, or hiredis packs a value
differently, these fail: ferry would otherwise silently lose the speed-up, or send
wrong bytes.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from redis.asyncio.cluster import ClusterNode, NodesManager, PipelineCommand
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.connection import HiredisRespSerializer, PythonRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import SlotNotCoveredError

from ferry.adapters.redis import FerryRedisCluster, HiredisPacking, hiredis_packed
from ferry.queue.connection import connect
from ferry.queue.errors import RedisBug, RedisUnavailable

ARGUMENTS: list[tuple[Any, ...]] = [
    ("SET", "key", "value"),
    ("EVALSHA", "0" * 40, 2, "a", "b", b"\r\n\x00\xff", "", 0, -1, 2**62, 1.5, "ünïcödé"),
    ("HSET", b"k" * 100_000, 0.1, 1e-7, 12345.678, bytes(range(256))),
]  # what ferry sends: str, bytes, int, float (hiredis takes no memoryview; ferry sends none)


@pytest.mark.parametrize("args", ARGUMENTS)
def test_hiredis_packs_every_value_as_redis_py_does(args: tuple[Any, ...]) -> None:
    python = PythonRespSerializer(buffer_cutoff=6000, encode=Connection().encoder.encode)
    assert b"".join(HiredisRespSerializer().pack(*args)) == b"".join(python.pack(*args))


@pytest.mark.parametrize("base", [Connection, SSLConnection, UnixDomainSocketConnection])
def test_every_connection_class_has_a_hiredis_twin(base: type[Connection]) -> None:
    twin = hiredis_packed(base)
    assert issubclass(twin, base) and issubclass(twin, HiredisPacking)
    assert twin.pack_command is HiredisPacking.pack_command


async def test_redis_py_sends_commands_through_the_packing_hook(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    packed: list[tuple[Any, ...]] = []
    original = HiredisPacking.pack_command

    def counting(self: HiredisPacking, *args: Any) -> list[bytes]:
        packed.append(args)
        return original(self, *args)

    monkeypatch.setattr(HiredisPacking, "pack_command", counting)
    redis = connect(redis_url)
    try:
        assert type(redis.connection_pool.connection_class) is type
        assert issubclass(redis.connection_pool.connection_class, HiredisPacking)
        await redis.set("canary", b"\r\nvalue")
        assert await redis.get("canary") == b"\r\nvalue"
    finally:
        await redis.aclose()
    assert ("SET", "canary", b"\r\nvalue") in packed


def test_the_cluster_internals_ferry_reaches_into_are_still_there() -> None:
    """`FerryRedisCluster.pipeline_on_master_of` and its mending of node roles use these
    (src/ferry/adapters/redis.py); tests/scaling/test_cluster.py and test_cluster_failover.py
    check what they do on a real Cluster. redis-py 8.0 made `move_slot` a coroutine."""
    command = PipelineCommand(0, "WAITAOF", 1, 0, 100)
    assert (command.args, command.kwargs, command.result) == (("WAITAOF", 1, 0, 100), {}, None)
    assert inspect.iscoroutinefunction(ClusterNode.execute_pipeline)
    assert inspect.iscoroutinefunction(ClusterNode.disconnect_free_connections)
    assert callable(ClusterNode.update_active_connections_for_reconnect)
    assert not inspect.iscoroutinefunction(NodesManager.move_slot)
    assert not inspect.iscoroutinefunction(NodesManager.move_node_to_end_of_cached_nodes)
    assert {"slots_cache", "nodes_cache", "default_node"} <= set(NodesManager.__slots__)
    client = FerryRedisCluster(host="127.0.0.1", port=1)  # connects only when first used
    assert client._initialize is True
    assert isinstance(client.RedisClusterRequestTTL, int) and client.RedisClusterRequestTTL > 1
    assert {RedisConnectionError, SlotNotCoveredError} <= set(client.ERRORS_ALLOW_RETRY)


async def test_a_lane_gives_each_reply_in_order_and_an_error_reply_in_its_place(redis_url: str) -> None:
    redis = connect(redis_url)
    lane = redis.lane()
    try:
        replies = await lane.execute(
            [("SET", "n", "x"), ("INCR", "n"), ("EVALSHA", "0" * 40, 0), ("LMOVE", "none", "none", "RIGHT", "RIGHT"),
             ("GET", "n")]
        )
    finally:
        await redis.aclose()
    assert replies[0] is True or replies[0] == b"OK"
    assert isinstance(replies[1], RedisBug) and "not an integer" in str(replies[1])
    assert isinstance(replies[2], RedisUnavailable) and "NOSCRIPT" in str(replies[2])  # the next call loads it
    assert replies[3:] == [None, b"x"]


async def test_a_lane_cancelled_while_it_waits_answers_the_next_call_with_its_own_reply(redis_url: str) -> None:
    """The reply of the cut-short wait must never be read as the next command's."""
    redis = connect(redis_url)
    lane = redis.lane()
    try:
        waiting = asyncio.create_task(lane.execute([("BLMOVE", "q", "q", "RIGHT", "RIGHT", 5)]))
        await asyncio.sleep(0.2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await redis.rpush("q", "late")  # would wake the old wait, were it still read
        assert not lane.busy
        assert await lane.execute([("ECHO", "mine")]) == [b"mine"]
    finally:
        await redis.aclose()


async def test_a_lane_whose_connection_was_killed_connects_again(redis_url: str) -> None:
    redis = connect(redis_url)
    lane = redis.lane()
    try:
        [lane_id] = await lane.execute([("CLIENT", "ID")])
        await redis.execute_command("CLIENT", "KILL", "ID", lane_id)
        [again] = await lane.execute([("CLIENT", "ID")])
        assert again != lane_id
    finally:
        await redis.aclose()
    ids = {client["id"] for client in await _client_list(redis_url)}
    assert str(again) not in ids  # closed with the client


async def _client_list(redis_url: str) -> list[dict[str, Any]]:
    other = connect(redis_url)
    try:
        return await other.client_list()  # type: ignore[no-any-return]
    finally:
        await other.aclose()
