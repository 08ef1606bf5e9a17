"""The proxy against generated input: its OpenAPI document (schemathesis) and raw HTTP (hypothesis).

Two properties hold for every request: no 500, and the queue grows by exactly
the messages the answer says were queued (an error never enqueues anything).
Examples are derandomized: every CI run checks the same ones, so a red run means
a change broke something, not that the dice found an old bug.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.inspect import client, queue_length
from tests.support.processes import Proxy
from tests.support.raw_http import read_to_close
from tests.support.servers import RedisProcess

API_KEY = "fuzz-key"


@pytest.fixture(scope="module")
def fuzzed(default_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    default_server.client().flushall()
    proxy = Proxy(
        tmp_path_factory.mktemp("fuzz"),
        default_server.url,
        None,  # plain HTTP on loopback: the generators speak it without a CA
        [],
        {"FERRY_MAX_BODY_BYTES": "4096", "FERRY_MAX_BATCH": "5"},
        api_key=API_KEY,
    )
    proxy.start()
    yield proxy
    proxy.stop()


# An invalid body past the size cap is refused with 413 before it is read whole:
# a rejection too, which schemathesis's default list of rejection codes lacks.
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]


@pytest.fixture
def api_schema(fuzzed: Proxy) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}}}
    )
    return schemathesis.openapi.from_url(fuzzed.base + "/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


def queued_by(status: int, answer: object) -> int:
    """How many messages an answer says were queued now."""
    if status != 202 or not isinstance(answer, dict):
        return 0
    if "messages" in answer:
        return sum(m["status"] == "queued" for m in answer["messages"])
    return 1


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_openapi_document_holds_and_errors_enqueue_nothing(case: schemathesis.Case, fuzzed: Proxy) -> None:
    before = queue_length(fuzzed_redis_url(fuzzed))
    response = case.call(headers={"Authorization": f"Bearer {API_KEY}"})
    case.validate_response(response)
    try:
        answer = response.json()
    except ValueError:  # /metrics is text
        answer = None
    assert response.status_code < 500
    assert queue_length(fuzzed_redis_url(fuzzed)) - before == queued_by(response.status_code, answer)


def fuzzed_redis_url(proxy: Proxy) -> str:
    return proxy.env["REDIS_URL"]


header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=0, max_size=300
)


@given(
    body=st.binary(max_size=6000),
    content_type=header_text,
    idempotency_key=st.none() | header_text,
)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_any_body_and_headers_are_stored_exactly_or_refused_cleanly(
    fuzzed: Proxy, body: bytes, content_type: str, idempotency_key: str | None
) -> None:
    redis_url = fuzzed_redis_url(fuzzed)
    before = queue_length(redis_url)
    headers = {"Content-Type": content_type}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    status, _, answer = fuzzed.request("POST", "/api/v1/messages", body, headers, key=API_KEY)
    assert status in (200, 202, 400, 413, 422), answer
    assert queue_length(redis_url) - before == queued_by(status, answer)
    if status == 202:
        stored = client(redis_url).hgetall(f"{{message_queue}}:msg:{answer['id']}")
        stored_type = stored.get(b"content_type", b"application/json")  # not stored at its default
        assert stored[b"body"] == body and stored_type == content_type.strip().encode()
    if len(body) > 4096:
        assert status == 413


def raw_exchange(port: int, request: bytes) -> bytes:
    """Send bytes as they are; return what comes back before the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(request)
        return read_to_close(sock, ends=(TimeoutError,))


def request_head(length: str, extra: bytes = b"") -> bytes:
    return (
        b"POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode()
        + b"\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: " + length.encode()
        + b"\r\n" + extra + b"\r\n"
    )


def test_huge_headers_do_no_harm(fuzzed: Proxy) -> None:
    redis_url = fuzzed_redis_url(fuzzed)
    before = queue_length(redis_url)
    answer = raw_exchange(fuzzed.port, request_head("2", b"X-Padding: " + b"p" * 200_000 + b"\r\n") + b"hi")
    assert answer.startswith(b"HTTP/1.1 431 ") and b'"headers_too_large"' in answer, answer[:100]
    assert queue_length(redis_url) == before
    assert fuzzed.post(b"still serving", "text/plain")[0] == 202


def test_a_body_shorter_than_its_content_length_is_never_queued(fuzzed: Proxy) -> None:
    before = queue_length(fuzzed_redis_url(fuzzed))
    answer = raw_exchange(fuzzed.port, request_head("100") + b"only twenty bytes...")
    assert b"HTTP/1.1 202" not in answer
    assert queue_length(fuzzed_redis_url(fuzzed)) == before


def test_a_body_longer_than_its_content_length_is_never_read_past_it(fuzzed: Proxy) -> None:
    redis_url = fuzzed_redis_url(fuzzed)
    before = queue_length(redis_url)
    answer = raw_exchange(fuzzed.port, request_head("5") + b"hello, and then garbage that is no request")
    assert answer.startswith(b"HTTP/1.1 ") and b"HTTP/1.1 5" not in answer
    if answer.startswith(b"HTTP/1.1 202"):  # the declared five bytes are the message
        assert queue_length(redis_url) == before + 1
        newest = client(redis_url).lindex("message_queue", 0).decode()
        assert client(redis_url).hget(f"{{message_queue}}:msg:{newest}", "body") == b"hello"
    else:  # uvicorn refuses the whole exchange as a bad request: then nothing is queued
        assert answer.startswith(b"HTTP/1.1 400") and queue_length(redis_url) == before


@pytest.mark.parametrize("length", ["-1", "abc", "1e3", "99999999999999999999999"])
def test_a_malformed_content_length_is_a_clean_4xx(fuzzed: Proxy, length: str) -> None:
    before = queue_length(fuzzed_redis_url(fuzzed))
    answer = raw_exchange(fuzzed.port, request_head(length) + b"hello")
    assert answer.startswith(b"HTTP/1.1 4") or answer == b""  # httptools may just close
    assert queue_length(fuzzed_redis_url(fuzzed)) == before
