"""Idle and slow clients over real TLS: each is cut off within its limit (plus a margin),
answered in ferry's JSON where an answer is due, and nothing of theirs is stored;
clients that are slow but within the limits are served.

The proxies here run with limits of a second (FERRY_HEAD_TIMEOUT_SECONDS,
FERRY_BODY_TIMEOUT_SECONDS, FERRY_KEEP_ALIVE_SECONDS), so that the limits, not the
tests' patience, end each exchange.
"""

from __future__ import annotations

import json
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from ferry.adapters.uvicorn import REFUSING_AT_MOST
from ferry.proxy.server import DESCRIPTOR_RESERVE, connections_that_fit
from ferry.settings import SettingsError, load_settings
from tests.support.certs import CertFiles
from tests.support.inspect import queue_length
from tests.support.processes import Proxy

StartProxy = Callable[..., Proxy]

LIMIT = 1.0  # seconds, every time limit of the proxies here
# A limit is enforced within a quarter of itself late (the sweep); the rest is a loaded machine.
MARGIN = 1.5
TIMED = {
    "FERRY_HEAD_TIMEOUT_SECONDS": LIMIT,
    "FERRY_BODY_TIMEOUT_SECONDS": LIMIT,
    "FERRY_KEEP_ALIVE_SECONDS": LIMIT,
}


@contextmanager
def tls_connection(proxy: Proxy, certs: CertFiles) -> Iterator[ssl.SSLSocket]:
    """A TLS connection to the proxy, its handshake done."""
    context = ssl.create_default_context(cafile=str(certs.ca))
    with socket.create_connection(("localhost", proxy.port), timeout=15) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            yield tls


def read_until_closed(tls: ssl.SSLSocket) -> bytes:
    """Everything the proxy sends until it closes (a reset counts as a close)."""
    answer = b""
    try:
        while chunk := tls.recv(65536):
            answer += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    return answer


class Dripper:
    """Sends one byte every `every` seconds on its own thread until the proxy stops taking them."""

    def __init__(self, tls: ssl.SSLSocket, byte: bytes, every: float = 0.25) -> None:
        self.tls, self.byte, self.every = tls, byte, every
        self.sent = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                self.tls.sendall(self.byte)  # the SSL object takes concurrent send and recv
            except OSError:
                return
            self.sent += 1

    def __enter__(self) -> Dripper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)


def refusal(answer: bytes) -> tuple[int, dict[str, str], dict[str, str]]:
    """Status, headers and JSON body of the one answer in `answer`."""
    head, body = answer.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, json.loads(body)


HEAD = (
    b"POST /api/v1/messages HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer test-key\r\n"
    b"Content-Type: application/octet-stream\r\n"
)


def test_a_connection_that_sends_nothing_is_closed_after_the_keep_alive_wait(
    redis_url: str, shared_proxy: StartProxy, certs: CertFiles
) -> None:
    proxy = shared_proxy(redis_url, **TIMED)
    with tls_connection(proxy, certs) as tls:
        opened = time.monotonic()
        answer = read_until_closed(tls)
        lasted = time.monotonic() - opened
    assert answer == b""  # nothing was asked, so nothing is answered
    assert LIMIT - 0.1 <= lasted < LIMIT + MARGIN, lasted
    assert queue_length(redis_url) == 0


def test_a_connection_idle_after_an_answer_is_closed_after_the_keep_alive_wait(
    redis_url: str, shared_proxy: StartProxy, certs: CertFiles
) -> None:
    proxy = shared_proxy(redis_url, **TIMED)
    with tls_connection(proxy, certs) as tls:
        tls.sendall(HEAD + b"Content-Length: 5\r\n\r\nhello")
        answered = b""
        while b'"queued"}' not in answered:
            answered += tls.recv(65536)
        idle_from = time.monotonic()
        rest = read_until_closed(tls)
        lasted = time.monotonic() - idle_from
    assert answered.startswith(b"HTTP/1.1 202 ") and rest == b""
    assert LIMIT - 0.1 <= lasted < LIMIT + MARGIN, lasted
    assert queue_length(redis_url) == 1


def test_half_a_head_dripping_a_byte_at_a_time_is_answered_408_within_the_head_timeout(
    redis_url: str, shared_proxy: StartProxy, certs: CertFiles
) -> None:
    proxy = shared_proxy(redis_url, **TIMED)
    with tls_connection(proxy, certs) as tls:
        opened = time.monotonic()
        tls.sendall(HEAD + b"X-Slow: ")
        with Dripper(tls, b"s") as dripper:  # never a whole head; never idle either
            answer = read_until_closed(tls)
        lasted = time.monotonic() - opened
    status, headers, body = refusal(answer)
    assert (status, body["error"]) == (408, "request_timeout") and "FERRY_HEAD_TIMEOUT_SECONDS" in body["detail"]
    assert headers["connection"] == "close" and headers["content-type"] == "application/json"
    assert dripper.sent >= 2
    # Answered at the limit; closed after at most the linger (2 s) the answer is given.
    assert LIMIT - 0.1 <= lasted < LIMIT + MARGIN + 2.0, lasted
    assert queue_length(redis_url) == 0


@pytest.mark.parametrize("trickle", [False, True], ids=["stops", "trickles"])
def test_a_body_that_stops_or_trickles_is_answered_408_within_the_body_timeout(
    trickle: bool, redis_url: str, shared_proxy: StartProxy, certs: CertFiles
) -> None:
    proxy = shared_proxy(redis_url, **TIMED)
    with tls_connection(proxy, certs) as tls:
        tls.sendall(HEAD + b"Content-Length: 100000\r\n\r\n" + b"b" * 50_000)
        stalled = time.monotonic()
        if trickle:  # a byte every quarter second: bytes, but no KiB, within the limit
            with Dripper(tls, b"b") as dripper:
                answer = read_until_closed(tls)
            assert dripper.sent >= 2
        else:
            answer = read_until_closed(tls)
        lasted = time.monotonic() - stalled
    status, headers, body = refusal(answer)
    assert (status, body["error"]) == (408, "request_timeout") and "FERRY_BODY_TIMEOUT_SECONDS" in body["detail"]
    assert headers["connection"] == "close"
    assert LIMIT - 0.1 <= lasted < LIMIT + MARGIN + 2.0, lasted
    assert queue_length(redis_url) == 0


def test_a_slow_but_steady_head_and_body_are_served(
    redis_url: str, shared_proxy: StartProxy, certs: CertFiles
) -> None:
    """Slower in all than each limit, but never a limit's pause: a client on a bad link."""
    proxy = shared_proxy(redis_url, **TIMED)
    body = bytes(range(256)) * 40  # 10 KiB
    with tls_connection(proxy, certs) as tls:
        started = time.monotonic()
        head = HEAD + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        tls.sendall(head[:40])
        time.sleep(0.6 * LIMIT)
        tls.sendall(head[40:])
        for offset in range(0, len(body), 2048):  # 2 KiB every 0.6 limits: 3 limits in all
            time.sleep(0.6 * LIMIT)
            tls.sendall(body[offset : offset + 2048])
        answer = read_until_closed(tls)
        assert time.monotonic() - started > 2 * LIMIT
    assert answer.startswith(b"HTTP/1.1 202 "), answer[:300]
    assert queue_length(redis_url) == 1


def test_time_the_proxy_takes_is_not_counted_against_the_client(
    redis_url: str, shared_proxy: StartProxy, certs: CertFiles
) -> None:
    """Pipelined requests wait for the answers before them: their heads and bodies are not late."""
    proxy = shared_proxy(redis_url, **TIMED)
    requests = [HEAD + b"Content-Length: 60000\r\n\r\n" + bytes([65 + number]) * 60_000 for number in range(30)]
    with tls_connection(proxy, certs) as tls:
        tls.sendall(b"".join(requests) + HEAD + b"Content-Length: 4\r\nConnection: close\r\n\r\nlast")
        answer = read_until_closed(tls)
    assert answer.count(b"HTTP/1.1 202 ") == 31, answer[-300:]
    assert queue_length(redis_url) == 31


def test_connections_past_the_cap_are_answered_503_and_closed(
    redis_url: str, shared_proxy: StartProxy, certs: CertFiles
) -> None:
    proxy = shared_proxy(redis_url, FERRY_MAX_CONNECTIONS=4, FERRY_KEEP_ALIVE_SECONDS=30, FERRY_HEAD_TIMEOUT_SECONDS=30)
    context = ssl.create_default_context(cafile=str(certs.ca))
    held = []
    try:
        for _ in range(4):
            raw = socket.create_connection(("localhost", proxy.port), timeout=15)
            held.append(context.wrap_socket(raw, server_hostname="localhost"))
        time.sleep(0.2)  # the proxy counts a connection once its handshake is done
        with tls_connection(proxy, certs) as extra:
            opened = time.monotonic()
            extra.sendall(HEAD + b"Content-Length: 5\r\n\r\nhello")
            answer = read_until_closed(extra)
            lasted = time.monotonic() - opened
        status, headers, body = refusal(answer)
        assert (status, body["error"]) == (503, "too_many_connections") and "FERRY_MAX_CONNECTIONS" in body["detail"]
        assert headers["retry-after"] == "1" and headers["connection"] == "close"
        assert lasted < 2.0 + MARGIN  # the linger at most
        # The connections held are served as ever; one closed makes room for a new one.
        held[0].sendall(HEAD + b"Content-Length: 4\r\nConnection: close\r\n\r\nheld")
        assert read_until_closed(held[0]).startswith(b"HTTP/1.1 202 ")
        held.pop(0).close()
        time.sleep(0.2)
        assert proxy.post(b"room again")[0] == 202
    finally:
        for tls in held:
            tls.close()
    assert queue_length(redis_url) == 2


def test_bodies_past_the_buffer_are_answered_503_and_the_buffer_is_given_back(
    redis_url: str, shared_proxy: StartProxy, certs: CertFiles
) -> None:
    """Two bodies of 300 KB do not fit in a buffer of 400 KB (each body's first 64 KiB
    free): the second is refused as it passes the buffer; the first is served, and
    once it is, a third fits again."""
    proxy = shared_proxy(redis_url, FERRY_MAX_BODY_BYTES=300_000, FERRY_BODY_BUFFER_BYTES=400_000)
    first_body = b"1" * 300_000
    with tls_connection(proxy, certs) as first:
        first.sendall(HEAD + b"Content-Length: 300000\r\nConnection: close\r\n\r\n" + first_body[:250_000])
        time.sleep(0.3)  # the first holds about 186 KB of the buffer
        with tls_connection(proxy, certs) as second:
            second.sendall(HEAD + b"Content-Length: 300000\r\n\r\n")
            try:
                second.sendall(b"2" * 300_000)
            except OSError:
                pass  # the proxy may already have answered and gone
            answer = read_until_closed(second)
        status, headers, body = refusal(answer)
        assert (status, body["error"]) == (503, "body_buffer_full") and "FERRY_BODY_BUFFER_BYTES" in body["detail"]
        assert headers["retry-after"] == "1" and headers["connection"] == "close"
        first.sendall(first_body[250_000:])
        assert read_until_closed(first).startswith(b"HTTP/1.1 202 ")
    assert queue_length(redis_url) == 1
    assert proxy.post(b"3" * 300_000)[0] == 202  # what the first held was given back
    assert queue_length(redis_url) == 2


def test_a_body_buffer_too_small_for_one_body_is_a_bad_setting() -> None:
    with pytest.raises(SettingsError, match="FERRY_BODY_BUFFER_BYTES must hold a body of FERRY_MAX_BODY_BYTES"):
        load_settings(max_body_bytes=1_000_000, body_buffer_bytes=500_000)
    assert load_settings(max_body_bytes=1_000_000, body_buffer_bytes=1_000_000 - 65_536).body_buffer_bytes


def test_the_connection_cap_fits_the_descriptor_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Raised to the hard limit when the soft one is short; lowered to what fits when both are."""
    limits = {"soft": 1024, "hard": 4096}
    monkeypatch.setattr(resource, "getrlimit", lambda _: (limits["soft"], limits["hard"]))

    def setrlimit(_: int, values: tuple[int, int]) -> None:
        if values[0] > limits["hard"]:
            raise ValueError("over the hard limit")
        limits["soft"] = values[0]

    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert connections_that_fit(1000) == 1000 and limits["soft"] == 1000 + REFUSING_AT_MOST + DESCRIPTOR_RESERVE
    limits.update(soft=1024, hard=1024)
    assert connections_that_fit(1000) == 1024 - REFUSING_AT_MOST - DESCRIPTOR_RESERVE
