"""Strict mode's start-up check on a replica: writes refused for now, not a Redis without WAITAOF.

Right after a failover the sentinels may still name the demoted master for a moment; a
strict proxy started then must come up answering 503 (and follow the sentinels), not exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from ferry.queue.connection import check_strict_durability, connect
from ferry.queue.errors import WritesRefused
from tests.support.processes import Proxy, wait_until
from tests.support.servers import RedisProcess


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    directory = tmp_path_factory.mktemp("replica")
    master, follower = RedisProcess("valkey", directory / "master"), RedisProcess("valkey", directory / "replica")
    master.start()
    follower.start()
    master.client().config_set("repl-diskless-sync-delay", 0)  # the replica syncs at once, not 5 s later
    follower.client().replicaof("127.0.0.1", master.port)
    wait_until(lambda: follower.client().info("replication")["master_link_status"] == "up")
    yield follower
    follower.kill()
    master.kill()


async def test_strict_check_on_a_replica_is_writes_refused(replica: RedisProcess) -> None:
    redis = connect(replica.url, retries=0)
    try:
        with pytest.raises(WritesRefused, match="replica"):
            await check_strict_durability(redis)
    finally:
        await redis.aclose()


def test_a_strict_proxy_on_a_replica_starts_and_answers_503(
    replica: RedisProcess, start_proxy: Callable[..., Proxy]
) -> None:
    proxy = start_proxy(replica.url, FERRY_DURABILITY="strict")
    status, _, body = proxy.request("POST", "/api/v1/messages", b"{}", {"Content-Type": "application/json"})
    assert status == 503 and body["error"] == "redis_refusing_writes", body
