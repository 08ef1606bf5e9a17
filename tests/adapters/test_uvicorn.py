"""ferry's HTTP protocol in process, fed the same bytes cut at many read boundaries; and canaries
for the uvicorn internals it relies on.

Over a socket the kernel and TLS choose where reads end; here the test does, so
a request's head or body straddling two reads is certain to be tried.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import ssl
from typing import Any

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState
from uvicorn.supervisors import Multiprocess

from ferry.adapters.uvicorn import MAX_HEAD_BYTES, Limits, ProxyConfig, ProxyHttpProtocol
from tests.support.certs import CertFiles

READ_SIZES = [1000, 4096, 8192, 12_000, 16_384, 40_000, 65_536, 131_072]


async def echo_length(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers 202 with the length of the body it read (as the ingest route reads it)."""
    if scope["type"] != "http":
        return
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = json.dumps({"length": size}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 202, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RecordingTransport(asyncio.Transport):
    """What the protocol writes, and whether it closed or aborted the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data: Any) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8001), "peername": ("127.0.0.1", 50000)}.get(name, default)


async def exchange(data: bytes, read_size: int, limits: Limits | None = None) -> RecordingTransport:
    """Feeds `data` in reads of `read_size` (waiting while the protocol pauses reading)."""
    config: uvicorn.Config
    if limits is None:  # uvicorn's own config, as the benchmarks' baselines use it
        config = uvicorn.Config(echo_length, http=ProxyHttpProtocol, lifespan="off", log_level="critical")
    else:
        config = ProxyConfig(echo_length, http=ProxyHttpProtocol, lifespan="off", log_level="critical", limits=limits)
    config.load()
    protocol = ProxyHttpProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)
    for start in range(0, len(data), read_size):
        while transport.paused and not transport.closed:
            await asyncio.sleep(0)
        if transport.closed:
            break
        protocol.data_received(data[start : start + read_size])
        await asyncio.sleep(0)
    quiet = 0
    while quiet < 100:  # until nothing more is written: the pipelined answers come one by one
        written = len(transport.written)
        await asyncio.sleep(0)
        quiet = quiet + 1 if len(transport.written) == written else 0
    return transport


def post(body: bytes, *headers: bytes) -> bytes:
    head = [b"POST /api/v1/messages HTTP/1.1", b"Host: x", b"Content-Length: %d" % len(body), *headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def statuses(written: bytes) -> list[int]:
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", bytes(written))]


@pytest.mark.parametrize("read_size", READ_SIZES)
async def test_pipelined_large_bodies_are_never_taken_for_large_heads(read_size: int) -> None:
    bodies = [bytes([65 + number % 26]) * (40_000 + number) for number in range(12)]
    transport = await exchange(b"".join(post(body) for body in bodies), read_size)
    assert statuses(transport.written) == [202] * len(bodies)
    lengths = [json.loads(part.split(b"\r\n\r\n", 1)[1]) for part in bytes(transport.written).split(b"HTTP/1.1 ")[1:]]
    assert [answer["length"] for answer in lengths] == [len(body) for body in bodies]
    assert not transport.closed


@pytest.mark.parametrize("read_size", READ_SIZES)
async def test_many_small_pipelined_requests_are_all_answered(read_size: int) -> None:
    transport = await exchange(b"".join(post(b"m%d" % number) for number in range(2000)), read_size)
    assert statuses(transport.written) == [202] * 2000


@pytest.mark.parametrize("read_size", READ_SIZES)
async def test_headers_over_the_cap_get_exactly_one_431(read_size: int) -> None:
    padding = [b"X-Pad-%d: %s" % (number, b"p" * 1000) for number in range(40)]
    transport = await exchange(post(b"x", *padding) + post(b"next"), read_size)
    assert statuses(transport.written) == [431]
    assert b'"error":"headers_too_large"' in transport.written


@pytest.mark.parametrize("read_size", READ_SIZES)
async def test_headers_just_under_the_cap_are_served(read_size: int) -> None:
    line_bytes = 1000 + len(b"X-Pad-00") + 4
    padding = [b"X-Pad-%02d: %s" % (number, b"p" * 1000) for number in range((MAX_HEAD_BYTES - 200) // line_bytes)]
    transport = await exchange(post(b"x", *padding) + post(b"next"), read_size)
    assert statuses(transport.written) == [202, 202]


@pytest.mark.parametrize("read_size", READ_SIZES)
async def test_an_endless_trailer_line_is_cut_off(read_size: int) -> None:
    """Trailers of a chunked body are header fields too, buffered by httptools until they end."""
    head = b"POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked = head + b"5\r\nhello\r\n0\r\nX-Trailer: " + b"t" * 2_000_000
    transport = await exchange(chunked, read_size)
    assert statuses(transport.written) == [431]


async def test_a_chunked_body_of_tiny_chunks_is_served() -> None:
    head = b"POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = b"".join(b"1\r\n%c\r\n" % (97 + number % 26) for number in range(30_000))
    transport = await exchange(head + chunks + b"0\r\n\r\n", 7)
    assert statuses(transport.written) == [202]
    assert json.loads(bytes(transport.written).split(b"\r\n\r\n", 1)[1]) == {"length": 30_000}


@pytest.mark.parametrize("read_size", READ_SIZES)
async def test_a_malformed_request_is_answered_in_json_after_the_pipelined_ones_before_it(read_size: int) -> None:
    bad = b"POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi"
    transport = await exchange(b"".join(post(b"m%d" % number) for number in range(5)) + bad + post(b"never"), read_size)
    assert statuses(transport.written) == [202] * 5 + [400]
    last = bytes(transport.written).rsplit(b"HTTP/1.1 400 ", 1)[1]
    assert b"content-type: application/json" in last and b"connection: close" in last
    assert json.loads(last.split(b"\r\n\r\n", 1)[1])["error"] == "bad_request"


async def test_a_parse_error_inside_the_body_of_the_request_in_flight_is_answered_at_once() -> None:
    """Not after that request's answer: the request cannot be answered without its body."""
    head = b"POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    transport = await exchange(head + b"5\r\nhello\r\nzz\r\n", 65536)
    assert statuses(transport.written) == [400]


async def test_an_idle_connection_is_closed_and_a_stalled_head_answered_408() -> None:
    limits = Limits(head_timeout_seconds=0.3, body_timeout_seconds=0.3, keep_alive_seconds=0.2)
    idle = await exchange(b"", 65536, limits)
    await asyncio.sleep(0.6)
    assert idle.closed and idle.written == b""
    stalled = await exchange(b"POST /api/v1/messages HTTP/1.1\r\nHost: x\r\n", 65536, limits)
    await asyncio.sleep(0.6)
    assert statuses(stalled.written) == [408] and b'"request_timeout"' in stalled.written


async def test_a_stalled_body_is_answered_408_and_its_request_sees_a_disconnect() -> None:
    limits = Limits(head_timeout_seconds=5, body_timeout_seconds=0.3, keep_alive_seconds=5)
    transport = await exchange(b"POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhalf", 65536, limits)
    await asyncio.sleep(0.8)
    assert statuses(transport.written) == [408]  # echo_length saw the disconnect: no 202 after


# Canaries: uvicorn's internals look as ferry.adapters.uvicorn expects.

OVERRIDDEN = [
    "connection_made",
    "connection_lost",
    "on_message_begin",
    "on_headers_complete",
    "on_body",
    "data_received",
    "on_response_complete",
    "shutdown",
    "send_400_response",
]
# Replaced, not extended: what uvicorn's do is copied, less the keep-alive timer and
# the text/plain 400. A name more or fewer means uvicorn's changed: compare again.
REPLACED = {
    "data_received": {
        "HttpParserError", "HttpParserUpgrade", "_should_upgrade", "_unset_keepalive_if_required",
        "_unsupported_upgrade_warning", "feed_data", "handle_websocket_upgrade", "httptools", "logger",
        "parser", "send_400_response", "warning",
    },
    "on_response_complete": {
        "_start_asgi_task", "_unset_keepalive_if_required", "call_later", "flow", "is_closing", "loop",
        "pipeline", "pop", "resume_reading", "server_state", "timeout_keep_alive",
        "timeout_keep_alive_handler", "timeout_keep_alive_task", "total_requests", "transport",
    },
    "shutdown": {"close", "cycle", "keep_alive", "response_complete", "transport"},
}
# What ferry reads and sets on a request's cycle.
CYCLE_ATTRIBUTES = [
    "more_body", "response_started", "response_complete", "waiting_for_100_continue", "keep_alive",
    "disconnected", "message_event",
]


@pytest.mark.parametrize("name", sorted(REPLACED))
def test_uvicorns_replaced_hooks_still_do_what_ferry_copied(name: str) -> None:
    assert set(getattr(HttpToolsProtocol, name).__code__.co_names) == REPLACED[name]


def test_uvicorns_request_cycle_keeps_the_state_ferry_reads() -> None:
    names = RequestResponseCycle.__init__.__code__.co_names
    assert [name for name in CYCLE_ATTRIBUTES if name not in names] == []
    assert "read_paused" in uvicorn.protocols.http.flow_control.FlowControl.__init__.__code__.co_names


@pytest.mark.parametrize("name", OVERRIDDEN)
def test_uvicorn_still_calls_the_hooks_ferry_overrides(name: str) -> None:
    theirs = getattr(HttpToolsProtocol, name)
    ours = getattr(ProxyHttpProtocol, name)
    assert ours is not theirs, f"ProxyHttpProtocol no longer overrides {name}"
    assert list(inspect.signature(ours).parameters) == list(inspect.signature(theirs).parameters)


def test_uvicorn_multiprocess_takes_a_config_and_its_sockets() -> None:
    assert list(inspect.signature(Multiprocess.__init__).parameters) == ["self", "config", "sockets"]


def test_the_config_it_loads_speaks_tls_1_2_at_least(certs: CertFiles) -> None:
    config = ProxyConfig(echo_length, ssl_certfile=str(certs.server_cert), ssl_keyfile=str(certs.server_key), http=ProxyHttpProtocol)
    config.load()
    assert config.ssl is not None and config.ssl.minimum_version is ssl.TLSVersion.TLSv1_2
    assert config.http_protocol_class is ProxyHttpProtocol
