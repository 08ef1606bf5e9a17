"""One rule for the header values ferry keeps, on both ingest routes: Content-Type and
Idempotency-Key are 1 to 255 printable ASCII characters, so what is stored is what is
delivered, byte for byte; anything else is a 422 that stores nothing."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.support.inspect import client, queue_length
from tests.support.processes import Proxy

StartProxy = Callable[..., Proxy]


def raw_post(proxy: Proxy, headers: list[tuple[str, bytes]], body: bytes = b"{}") -> tuple[int, dict[str, str]]:
    auth = [("Authorization", f"Bearer {proxy.api_key}".encode())]
    return proxy.raw_request("POST", "/api/v1/messages", auth + headers, body)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "content_type",
    [b"text/plain; charset=\xe9t\xe9", b"x" * 256, b""],
    ids=["latin-1", "too-long", "empty"],
)
def test_a_content_type_ferry_could_not_keep_byte_for_byte_is_refused(
    redis_url: str, shared_proxy: StartProxy, content_type: bytes
) -> None:
    proxy = shared_proxy(redis_url)
    status, answer = raw_post(proxy, [("Content-Type", content_type)])
    assert (status, answer["error"]) == (422, "invalid_request")
    assert "Content-Type must be 1 to 255 printable ASCII characters" in answer["detail"]
    assert queue_length(redis_url) == 0


def test_the_batch_route_applies_the_same_rule(redis_url: str, shared_proxy: StartProxy) -> None:
    proxy = shared_proxy(redis_url)
    for item in ({"body": "x", "content_type": "text/plain; charset=\u00e9t\u00e9"},
                 {"body": "x", "idempotency_key": "caf\u00e9"}):
        status, _, answer = proxy.request(
            "POST", "/api/v1/messages/batch", json.dumps({"messages": [item]}).encode(),
            {"Content-Type": "application/json"},
        )
        assert (status, answer["error"]) == (422, "invalid_request"), answer
    assert queue_length(redis_url) == 0


def test_a_printable_ascii_content_type_is_kept_byte_for_byte(redis_url: str, shared_proxy: StartProxy) -> None:
    proxy = shared_proxy(redis_url)
    kept = b'application/vnd.acme+json; profile="https://x.example/v1?a=1&b=~"'
    status, answer = raw_post(proxy, [("Content-Type", kept)])
    assert status == 202
    assert client(redis_url).hget("{message_queue}:msg:" + answer["id"], "content_type") == kept
