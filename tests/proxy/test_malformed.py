"""Malformed requests over real TLS: each is refused in ferry's JSON envelope with a stable
code, and stores nothing. Heads httptools will not parse are `400 bad_request` (uvicorn
said `400 text/plain`); a wrong path is `404 not_found`, never a redirect; a batch value
JSON cannot carry exactly is `422 invalid_request` (it was a 500, or stored as null)."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Callable

import pytest

from tests.support.certs import CertFiles
from tests.support.inspect import client, queue_length
from tests.support.processes import Proxy
from tests.support.raw_http import read_to_close

StartProxy = Callable[..., Proxy]

AUTH = b"Authorization: Bearer test-key\r\n"


def exchange(proxy: Proxy, certs: CertFiles, request: bytes) -> bytes:
    """`request` as given on one TLS connection; all the proxy sends until it closes."""
    context = ssl.create_default_context(cafile=str(certs.ca))
    with socket.create_connection(("localhost", proxy.port), timeout=15) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(request)
            return read_to_close(tls, ends=(ConnectionResetError, ssl.SSLError))


def answers(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The answers in `raw`, in order: status, headers, body (by Content-Length)."""
    found = []
    while raw:
        head, rest = raw.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        found.append((int(lines[0].split()[1]), headers, rest[:length]))
        raw = rest[length:]
    return found


MALFORMED = {
    "Transfer-Encoding and Content-Length": b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "obs-fold": b"X-Folded: a\r\n  b\r\nContent-Length: 5\r\n\r\nhello",
    "control character in a header": b"X-Bad: a\x01b\r\nContent-Length: 5\r\n\r\nhello",
    "duplicate Content-Length": b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "two different Content-Lengths": b"Content-Length: 5\r\nContent-Length: 3\r\n\r\nhello",
    "space before the colon": b"Content-Length : 5\r\n\r\nhello",
    "bare CR": b"X-Bad: a\rb\r\nContent-Length: 5\r\n\r\nhello",
    "unknown Transfer-Encoding": b"Transfer-Encoding: gzip\r\n\r\nhello",
    "bad chunk size": b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("rest", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_head_is_400_bad_request_in_json_and_stores_nothing(
    rest: bytes, redis_url: str, shared_proxy: StartProxy, certs: CertFiles
) -> None:
    proxy = shared_proxy(redis_url)
    raw = exchange(proxy, certs, b"POST /api/v1/messages HTTP/1.1\r\nHost: localhost\r\n" + AUTH + rest)
    [(status, headers, body)] = answers(raw)
    assert (status, headers["content-type"], headers["connection"]) == (400, "application/json", "close")
    answer = json.loads(body)
    assert answer["error"] == "bad_request" and answer["detail"].startswith("not a valid HTTP/1.1 request: ")
    assert queue_length(redis_url) == 0


@pytest.mark.parametrize(
    "request_line",
    [b"GET /a\x00b HTTP/1.1", b"GET /\xc3\xa9 HTTP/1.1", b"NOT HTTP AT ALL", b"PRI * HTTP/2.0"],
    ids=["NUL in the path", "raw UTF-8 in the path", "not HTTP", "HTTP/2 without TLS ALPN"],
)
def test_a_malformed_request_line_is_400_bad_request_in_json(
    request_line: bytes, redis_url: str, shared_proxy: StartProxy, certs: CertFiles
) -> None:
    proxy = shared_proxy(redis_url)
    [(status, headers, body)] = answers(exchange(proxy, certs, request_line + b"\r\nHost: localhost\r\n\r\n"))
    assert (status, headers["content-type"], json.loads(body)["error"]) == (400, "application/json", "bad_request")


def test_a_malformed_request_after_a_good_one_is_refused_after_its_answer(
    redis_url: str, shared_proxy: StartProxy, certs: CertFiles
) -> None:
    """Pipelined: the good one is stored and answered first, then the bad one is refused."""
    proxy = shared_proxy(redis_url)
    good = b"POST /api/v1/messages HTTP/1.1\r\nHost: localhost\r\n" + AUTH + b"Content-Length: 4\r\n\r\ngood"
    bad = b"POST /api/v1/messages HTTP/1.1\r\nHost: localhost\r\n" + AUTH + MALFORMED["duplicate Content-Length"]
    [(first, _, accepted), (second, _, refused)] = answers(exchange(proxy, certs, good + bad))
    assert (first, second, json.loads(refused)["error"]) == (202, 400, "bad_request")
    assert client(redis_url).hget(f"{{message_queue}}:msg:{json.loads(accepted)['id']}", "body") == b"good"
    assert queue_length(redis_url) == 1


def test_a_request_asking_to_switch_protocols_is_never_stored_without_its_body(
    redis_url: str, shared_proxy: StartProxy, certs: CertFiles
) -> None:
    """httptools skips the body of a request with Upgrade (curl --http2 sends h2c's):
    uvicorn served it with an empty body, and ferry stored an empty message."""
    proxy = shared_proxy(redis_url)
    request = (
        b"POST /api/v1/messages HTTP/1.1\r\nHost: localhost\r\n" + AUTH
        + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
        + b"Content-Length: 5\r\n\r\nhello"
    )
    [(status, headers, body)] = answers(exchange(proxy, certs, request))
    assert (status, json.loads(body)["error"], headers["connection"]) == (400, "bad_request", "close")
    assert queue_length(redis_url) == 0
    # Without a body there is nothing to lose: served, and the connection closed after.
    get = b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    [(status, headers, _)] = answers(exchange(proxy, certs, get))
    assert (status, headers["connection"]) == (200, "close")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/messages/"),
        ("POST", "/api/v1/messages/batch/"),
        ("GET", "/api/v1/health/"),
        ("POST", "/api/v1/dead-letters/replay/"),
        ("GET", "//api/v1/health"),
    ],
)
def test_a_wrong_path_is_404_not_found_never_a_redirect(
    method: str, path: str, redis_url: str, shared_proxy: StartProxy, certs: CertFiles
) -> None:
    proxy = shared_proxy(redis_url)
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: evil.example\r\nContent-Type: application/json\r\n".encode()
        + AUTH + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    [(status, headers, body)] = answers(exchange(proxy, certs, request))
    assert (status, json.loads(body)["error"]) == (404, "not_found")
    assert "location" not in headers and headers["content-type"] == "application/json"
    assert queue_length(redis_url) == 0


@pytest.mark.parametrize(
    "value",
    [
        b"18446744073709551616",  # 2**64
        b"-9223372036854775809",  # -2**63 - 1
        b"123456789012345678901234567890",
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b"1e400",  # past a float's range: infinity
        b'{"deep": [1, 2, {"deeper": NaN}]}',
    ],
)
def test_a_batch_value_json_cannot_carry_exactly_is_422_and_nothing_is_stored(
    value: bytes, redis_url: str, shared_proxy: StartProxy
) -> None:
    proxy = shared_proxy(redis_url)
    batch = b'{"messages": [{"json": {"fine": 1}}, {"json": ' + value + b"}]}"
    status, _, answer = proxy.request("POST", "/api/v1/messages/batch", batch, {"Content-Type": "application/json"})
    assert (status, answer["error"]) == (422, "invalid_request") and "cannot be kept exactly" in answer["detail"]
    assert queue_length(redis_url) == 0  # all or nothing: the fine one neither


def test_batch_values_at_the_edges_are_stored_exactly(redis_url: str, shared_proxy: StartProxy) -> None:
    proxy = shared_proxy(redis_url)
    values = [b"18446744073709551615", b"-9223372036854775808", b"1.7976931348623157e+308", b"null", b'"NaN"']
    batch = b'{"messages": [' + b", ".join(b'{"json": ' + value + b"}" for value in values) + b"]}"
    status, _, answer = proxy.request("POST", "/api/v1/messages/batch", batch, {"Content-Type": "application/json"})
    assert status == 202
    stored = [client(redis_url).hget(f"{{message_queue}}:msg:{m['id']}", "body") for m in answer["messages"]]
    assert stored == values


def test_a_single_message_stays_bytes_as_given(redis_url: str, shared_proxy: StartProxy) -> None:
    """The single route stores the body it is given, JSON or not: nothing is parsed."""
    proxy = shared_proxy(redis_url)
    body = b'{"n": 18446744073709551616, "x": NaN, "y": -Infinity}'
    status, _, answer = proxy.post(body, "application/json")
    assert status == 202
    assert client(redis_url).hget(f"{{message_queue}}:msg:{answer['id']}", "body") == body


def test_an_answer_given_before_the_body_was_read_ends_the_connection(
    redis_url: str, shared_proxy: StartProxy, certs: CertFiles
) -> None:
    """A 401 before the body came: the rest of the body must not be read as the next
    request, so the connection is closed (after a linger) however long the client sends."""
    proxy = shared_proxy(redis_url)
    context = ssl.create_default_context(cafile=str(certs.ca))
    with socket.create_connection(("localhost", proxy.port), timeout=15) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"POST /api/v1/messages HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000000\r\n\r\n")
            answer = b""
            while b'"unauthorized"' not in answer:
                answer += tls.recv(65536)
            sent = 0
            with pytest.raises(OSError):  # lingering, then aborted: ~2 s and at most 512 KiB later
                while sent < 50_000_000:
                    tls.sendall(b"x" * 65536)
                    sent += 65536
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert sent < 20_000_000
    assert queue_length(redis_url) == 0
