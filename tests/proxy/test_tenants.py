"""Two API keys are two tenants: neither can suppress the other's messages with an
Idempotency-Key, nor read the other's message status (404, as for no message at all);
admin keys read every status. Over real HTTPS, on both ingest routes."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.support.inspect import queue_length
from tests.support.processes import Proxy

StartProxy = Callable[..., Proxy]
KEYS = {"FERRY_API_KEYS": "key-a,key-b", "FERRY_ADMIN_API_KEYS": "admin-key"}


def send(proxy: Proxy, key: str, idempotency_key: str) -> tuple[int, dict[str, str]]:
    status, _, answer = proxy.request(
        "POST", "/api/v1/messages", b'{"invoice": 1001}',
        {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}, key=key,
    )
    return status, answer


def send_batch(proxy: Proxy, key: str, idempotency_key: str) -> tuple[int, dict[str, str]]:
    batch = {"messages": [{"json": {"invoice": 1001}, "idempotency_key": idempotency_key}]}
    status, _, answer = proxy.request(
        "POST", "/api/v1/messages/batch", json.dumps(batch).encode(), {"Content-Type": "application/json"}, key=key
    )
    return status, answer["messages"][0] if status == 202 else answer


def test_an_idempotency_key_is_the_senders_own(redis_url: str, shared_proxy: StartProxy) -> None:
    proxy = shared_proxy(redis_url, **KEYS)
    status_b, by_b = send(proxy, "key-b", "invoice-1001")
    status_a, by_a = send(proxy, "key-a", "invoice-1001")  # the same header, another tenant
    assert (status_b, status_a) == (202, 202) and by_a["id"] != by_b["id"]
    status_a_again, again = send(proxy, "key-a", "invoice-1001")
    assert (status_a_again, again["id"], again["status"]) == (200, by_a["id"], "existing")

    batch_b, in_batch_b = send_batch(proxy, "key-b", "order-77")
    batch_a, in_batch_a = send_batch(proxy, "key-a", "order-77")
    assert (batch_b, batch_a) == (202, 202)
    assert in_batch_a["status"] == in_batch_b["status"] == "queued" and in_batch_a["id"] != in_batch_b["id"]
    assert queue_length(redis_url) == 4


def test_a_message_status_is_read_by_its_sender_and_admins_only(redis_url: str, shared_proxy: StartProxy) -> None:
    proxy = shared_proxy(redis_url, **KEYS)
    _, sent = send(proxy, "key-a", "status-1")
    _, sent_in_batch = send_batch(proxy, "key-a", "status-2")
    for message_id in (sent["id"], sent_in_batch["id"]):
        path = f"/api/v1/messages/{message_id}"
        assert proxy.request("GET", path, key="key-a")[0] == 200
        status, _, answer = proxy.request("GET", path, key="key-b")
        assert status == 404 and answer == proxy.request("GET", "/api/v1/messages/no-such-id", key="key-b")[2]
        status, _, answer = proxy.request("GET", path, key="admin-key")
        assert status == 200 and answer["id"] == message_id
        assert proxy.request("GET", path, key="stranger")[0] == 401
