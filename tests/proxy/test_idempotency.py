"""A repeated Idempotency-Key answers its first message's id for the key's TTL, and says
where that message is now: a client whose first message died or is gone knows to send
it again under a new key."""

from __future__ import annotations

import json
from collections.abc import Callable

from ferry.queue import Queue
from tests.support.inspect import queue_length, with_queue
from tests.support.processes import Proxy

StartProxy = Callable[..., Proxy]


def test_a_repeated_key_says_the_first_message_died_or_is_gone(redis_url: str, shared_proxy: StartProxy) -> None:
    proxy = shared_proxy(redis_url)
    status, _, first = proxy.post(b'{"invoice": 1001}', Idempotency_Key="invoice-1001")
    assert status == 202

    async def bury(queue: Queue) -> None:
        assert await queue.heartbeat("w1", "test", 30, take=True)
        [claimed] = await queue.claim("w1", 1, holder="test")
        assert await queue.bury("w1", claimed.id, "HTTP 400: unknown invoice", holder="test")

    with_queue(redis_url, bury)
    status, _, repeat = proxy.post(b'{"invoice": 1001}', Idempotency_Key="invoice-1001")
    assert (status, repeat) == (200, {"id": first["id"], "status": "existing", "message_status": "dead"})

    with_queue(redis_url, lambda queue: queue.purge([first["id"]]))
    status, _, repeat = proxy.post(b'{"invoice": 1001}', Idempotency_Key="invoice-1001")
    assert (status, repeat) == (200, {"id": first["id"], "status": "existing", "message_status": "gone"})
    assert queue_length(redis_url) == 0  # the key still answers its first message: nothing stored

    status, _, fresh = proxy.post(b'{"invoice": 1001}', Idempotency_Key="invoice-1001-again")
    assert status == 202 and fresh["id"] != first["id"]


def test_a_batch_item_with_a_repeated_key_says_where_its_first_message_is(
    redis_url: str, shared_proxy: StartProxy
) -> None:
    proxy = shared_proxy(redis_url)
    _, _, first = proxy.post(b"{}", Idempotency_Key="order-9")
    batch = {"messages": [{"json": {"n": 1}, "idempotency_key": "order-9"}, {"json": {"n": 2}}]}
    status, _, answer = proxy.request(
        "POST", "/api/v1/messages/batch", json.dumps(batch).encode(), {"Content-Type": "application/json"}
    )
    assert status == 202
    repeated, fresh = answer["messages"]
    assert repeated == {"id": first["id"], "status": "existing", "message_status": "queued"}
    assert fresh["status"] == "queued" and "message_status" not in fresh
    assert queue_length(redis_url) == 2
