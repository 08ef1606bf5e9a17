"""The proxy when Redis answers but will not store, or answers what ferry cannot use.

Refusing writes (OOM, MISCONF, READONLY) is a 503 `redis_refusing_writes` with
Retry-After and Redis's reason, on every route that writes, and the health route
says so; nothing is stored that was not confirmed. A reply ferry cannot use is a
500 `internal_error` in JSON, its traceback in the proxy's log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from ferry.queue import Queue
from ferry.queue.keys import Keys
from ferry.queue.message import NewMessage, new_message_id
from tests.refusals import REASON, REFUSALS, writes_refused
from tests.support.inspect import client, queue_length, with_queue
from tests.support.processes import Proxy, wait_until
from tests.support.servers import RedisProcess

StartProxy = Callable[..., Proxy]
Answer = tuple[int, dict[str, str], Any]

ADMIN_KEY = "admin-key"
BATCH = "/api/v1/messages/batch"
JSON = {"Content-Type": "application/json"}


def make_dead_letter(redis_url: str) -> str:
    """One message, claimed by a worker and buried, as a 400 from the main server would."""

    async def go(queue: Queue) -> str:
        await queue.enqueue([NewMessage(new_message_id(), b'{"dead": true}', "application/json")])
        await queue.heartbeat("w1", "test", 30, take=True)
        [claimed] = await queue.claim("w1", 1, holder="test")
        assert await queue.bury("w1", claimed.id, "HTTP 400: no", holder="test")
        return claimed.id

    return with_queue(redis_url, go)


def message_keys(redis_url: str) -> set[bytes]:
    return set(client(redis_url).scan_iter(match=Keys().message_prefix + "*"))


def assert_refused(answer: Answer, how: str) -> None:
    status, headers, body = answer
    assert (status, body["error"], headers["retry-after"]) == (503, "redis_refusing_writes", "1"), answer
    assert REASON[how] in body["detail"]


@pytest.mark.both_servers
@pytest.mark.parametrize("how", REFUSALS)
def test_while_redis_refuses_writes_the_proxy_answers_503_redis_refusing_writes_and_stores_nothing(
    how: str, own_redis: RedisProcess, start_proxy: StartProxy
) -> None:
    proxy = start_proxy(own_redis.url, FERRY_ADMIN_API_KEYS=ADMIN_KEY)
    make_dead_letter(own_redis.url)
    status, _, first = proxy.post(b'{"before": true}')
    assert status == 202
    stored = message_keys(own_redis.url)
    batch = json.dumps({"messages": [{"json": 1}, {"body": "two"}]}).encode()
    replay_all = (b'{"all": true}', JSON)

    with writes_refused(own_redis, how):
        assert_refused(proxy.post(b'{"during": true}', Idempotency_Key="sent-during"), how)
        assert_refused(proxy.request("POST", BATCH, batch, JSON), how)
        assert_refused(proxy.request("GET", "/api/v1/health", key=None), how)
        assert message_keys(own_redis.url) == stored and queue_length(own_redis.url) == 1
        replay = proxy.request("POST", "/api/v1/dead-letters/replay", *replay_all, key=ADMIN_KEY)
        if how == "oom":  # a script's first write frees memory (out of the dead letters), and
            assert replay[0] == 200  # Redis refuses a script for memory only before its first write
        else:
            assert_refused(replay, how)
        status, _, found = proxy.request("GET", f"/api/v1/messages/{first['id']}")
        assert (status, found["status"]) == (200, "queued")  # reads are still served

    # All is well again at once; the message refused was not stored, so its key is new.
    status, _, health = proxy.request("GET", "/api/v1/health", key=None)
    assert (status, health["status"]) == (200, "ok")
    status, _, again = proxy.post(b'{"during": true}', Idempotency_Key="sent-during")
    assert (status, again["status"]) == (202, "queued")
    assert proxy.request("POST", BATCH, batch, JSON)[0] == 202
    status, _, replayed = proxy.request("POST", "/api/v1/dead-letters/replay", *replay_all, key=ADMIN_KEY)
    assert (status, replayed["replayed"]) == (200, 0 if how == "oom" else 1)
    assert queue_length(own_redis.url) == 1 + 1 + 2 + 1


def test_a_reply_ferry_cannot_use_is_a_500_internal_error_logged_with_its_traceback(
    redis_url: str, start_proxy: StartProxy
) -> None:
    proxy = start_proxy(redis_url, FERRY_ADMIN_API_KEYS=ADMIN_KEY)
    keys = Keys()
    client(redis_url).set(keys.queue, "not a list")  # foreign data under ferry's names: WRONGTYPE
    client(redis_url).set(keys.dead, "not the dead letters")
    for answer in (
        proxy.post(b"{}"),
        proxy.request("POST", BATCH, json.dumps({"messages": [{"json": 1}]}).encode(), JSON),
        proxy.request("GET", "/api/v1/dead-letters", key=ADMIN_KEY),
        proxy.request("GET", "/api/v1/health", key=None),
    ):
        status, headers, body = answer
        assert (status, headers["content-type"], body["error"]) == (500, "application/json", "internal_error"), answer
    wait_until(lambda: proxy.log().count("WRONGTYPE") >= 4 and "Traceback" in proxy.log(), timeout=5)
    client(redis_url).delete(keys.queue, keys.dead)
    assert proxy.post(b"{}")[0] == 202
