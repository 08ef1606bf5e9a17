"""Strict mode with replicas (FERRY_STRICT_REPLICAS): what a 202 waits for, what a proxy says at start.

A Valkey master and one replica; the replica is stopped (SIGSTOP) where it must not
confirm anything, as a replica behind a stalled disk or network would be.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator

import pytest

from ferry.queue import NotDurable, Queue
from ferry.queue.connection import connect
from ferry.queue.message import NewMessage, new_message_id
from tests.support.processes import Proxy, wait_until
from tests.support.servers import RedisProcess


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    directory = tmp_path_factory.mktemp("strict-replicas")
    master, replica = RedisProcess("valkey", directory / "master"), RedisProcess("valkey", directory / "replica")
    master.start()
    master.client().config_set("repl-diskless-sync-delay", 0)  # the replica syncs at once, not 5 s later
    replica.start()
    replica.client().replicaof("127.0.0.1", master.port)
    wait_until(lambda: replica.client().info("replication")["master_link_status"] == "up")
    yield master, replica
    replica.kill()
    master.kill()


def _message(key: str) -> NewMessage:
    return NewMessage(new_message_id(), b"{}", "application/json", key, "", "sender")


async def _enqueue_strict(url: str, message: NewMessage) -> str:
    """On a connection of its own, as a resend through another proxy process would be."""
    redis = connect(url, retries=0)
    try:
        return (await Queue(redis).enqueue([message], fsync=True, replicas=1))[0].outcome
    finally:
        await redis.aclose()


def test_an_answer_from_a_copy_stored_earlier_waits_for_that_copys_replica(
    master: tuple[RedisProcess, RedisProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """WAITAOF waits for its own connection's writes. A resend of an Idempotency-Key (or a
    call retried after a lost connection) stores nothing and is answered from the first
    copy: on a connection that wrote nothing, WAITAOF would confirm at once a copy that no
    replica holds, and a failover could lose a message answered 200 (or 202)."""
    server, replica = master
    monkeypatch.setattr("ferry.queue.queue.FSYNC_TIMEOUT_MS", 300)
    first = _message("invoice-1")
    assert replica.process is not None
    replica.process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(NotDurable, match="fsynced by 0 of 1 replicas"):
            asyncio.run(_enqueue_strict(server.url, first))
        with pytest.raises(NotDurable, match="fsynced by 0 of 1 replicas"):  # a resend: 'existing'
            asyncio.run(_enqueue_strict(server.url, _message("invoice-1")))
        with pytest.raises(NotDurable, match="fsynced by 0 of 1 replicas"):  # the call retried
            asyncio.run(_enqueue_strict(server.url, first))
    finally:
        replica.process.send_signal(signal.SIGCONT)
    monkeypatch.undo()  # the replica reports what it fsynced once a second: the whole 2 s
    assert asyncio.run(_enqueue_strict(server.url, _message("invoice-1"))) == "existing"
    assert asyncio.run(_enqueue_strict(server.url, first)) == "queued"


def test_a_strict_proxy_warns_at_start_when_the_master_has_fewer_replicas_than_it_waits_for(
    master: tuple[RedisProcess, RedisProcess], start_proxy: Callable[..., Proxy]
) -> None:
    server, _ = master
    short = start_proxy(server.url, FERRY_DURABILITY="strict", FERRY_STRICT_REPLICAS=2)
    enough = start_proxy(server.url, FERRY_DURABILITY="strict", FERRY_STRICT_REPLICAS=1)
    warning = (
        "FERRY_STRICT_REPLICAS=2 but the master has 1 connected replica: "
        "strict messages are answered 503 until 2 are connected"
    )
    assert warning in short.log()
    status, _, body = short.post(b'{"n": 1}')
    assert status == 503 and body["error"] == "redis_unavailable", body
    assert "FERRY_STRICT_REPLICAS" not in enough.log()
    assert enough.post(b'{"n": 2}')[0] == 202
