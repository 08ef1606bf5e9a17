"""Two Authorization headers are refused whole on every route (which one counted used to
differ by route: the ingest read the last, the status route the first), and /docs, whose
page loads scripts from a public CDN, is off unless FERRY_API_DOCS turns it on."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.inspect import queue_length
from tests.support.processes import Proxy

StartProxy = Callable[..., Proxy]


def twice(proxy: Proxy, method: str, path: str, first: str, second: str) -> tuple[int, dict[str, str]]:
    headers = [("Authorization", f"Bearer {key}".encode()) for key in (first, second)]
    body = b"{}" if method == "POST" else b""
    return proxy.raw_request(method, path, [*headers, ("Content-Type", b"application/json")], body)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/v1/messages"), ("POST", "/api/v1/messages/batch"), ("GET", "/api/v1/messages/some-id"),
     ("GET", "/api/v1/dead-letters")],
)
def test_two_authorization_headers_are_refused_whole(
    redis_url: str, shared_proxy: StartProxy, method: str, path: str
) -> None:
    proxy = shared_proxy(redis_url, FERRY_ADMIN_API_KEYS="admin-key")
    for first, second in ((proxy.api_key, "stranger"), ("stranger", proxy.api_key), (proxy.api_key, "admin-key")):
        status, answer = twice(proxy, method, path, first, second)
        assert (status, answer["error"]) == (400, "bad_request"), (first, second, answer)
    assert queue_length(redis_url) == 0


def test_docs_are_off_unless_turned_on(redis_url: str, shared_proxy: StartProxy) -> None:
    off = shared_proxy(redis_url)
    assert off.request("GET", "/docs")[0] == 404
    assert off.request("GET", "/openapi.json")[0] == 200
    on = shared_proxy(redis_url, FERRY_API_DOCS="true")
    assert on.request("GET", "/docs")[0] == 200
