"""uvicorn: its httptools protocol with a response in one write, request heads capped,
clients held to time limits, connections and buffered bodies capped, and every refusal
in ferry's JSON; TLS 1.2 as the oldest protocol; its process supervisor.

The internals used: `HttpToolsProtocol`'s callbacks (`connection_made`,
`connection_lost`, `on_message_begin`, `on_headers_complete`, `on_body`,
`data_received`, `on_response_complete`, `shutdown`, `send_400_response`) and
attributes (`url`, `headers`, `parser`, `transport`, `loop`, `flow` and its
`read_paused`, `cycle`, `pipeline`, `connections`, `server_state`,
`_start_asgi_task`); `RequestResponseCycle`'s `more_body`, `response_started`,
`response_complete`, `waiting_for_100_continue`, `keep_alive`, `disconnected` and
`message_event`; `Config.load` and the `ssl` context it builds;
`uvicorn.supervisors.Multiprocess`. `data_received` and `on_response_complete`
are replaced, not extended: tests/adapters checks that uvicorn's still do what
these copy.

One write. uvicorn writes a response's head and its body as two transport writes,
and uvloop sends each at once: two syscalls, two TCP segments (two TLS records
over HTTPS) for every 202, and the client reads twice. Profiled under load, those
writes were the largest single cost of the ingest route. Here writes are gathered
and sent once, at the next turn of the event loop, so a response goes out whole; a
streamed response still goes out chunk by chunk, one turn apart.

Head cap. Neither uvicorn nor httptools limits a request's header fields: a client
could send a gigabyte of headers (or of chunked trailers) and httptools would
buffer it all. Here header fields over `MAX_HEAD_BYTES` are answered
`431 headers_too_large` and the connection closed.

Time limits. uvicorn closes a connection only when it stays idle after an answer,
with a timer per answer; one that never sends a request, or sends half of one, or a
body a byte every few seconds, stays open for ever. Here one sweep per process
(`Guard`, every `Limits.tick` seconds) looks at each connection's clocks, set as
bytes arrive: the keep-alive wait (nothing of a request yet, since the connection
or the last answer), the head (from the connection, or from a later request's
first byte, to the end of its head) and the body (each `BODY_PROGRESS_BYTES` of
it, or its end). A head or body too slow is answered `408 request_timeout`, an
idle connection closed quietly. Time the proxy itself takes (the app working, reading
paused) never counts against the client.

Caps. Past `Limits.max_connections` a new connection is answered
`503 too_many_connections` as soon as it is made (after the TLS handshake, which
is the only way a client learns why and when to come back), and past a further
`REFUSING_AT_MOST` lingering refusals it is dropped at once, so descriptors stay
bounded whatever the rate of new connections. Bodies count against
`Limits.body_buffer_bytes` per process, each request's first `FREE_BODY_BYTES`
excepted (those are bounded by the connection cap): a body that would pass it is
answered `503 body_buffer_full`.

Every refusal ferry's JSON. httptools' parse errors (which uvicorn answers
`400 text/plain`) are `400 bad_request` with the parser's reason. A refusal waits
for the answer to any earlier pipelined request, then is written whole with
`connection: close`; the connection then lingers, reading and dropping what the
client still sends (so the answer is not lost to a reset), and is aborted after
`LINGER_SECONDS` or `LINGER_BYTES`. An answer given before the request's body was
all read (a 401, a 413) ends the connection the same way: the unread rest of the
body would otherwise be read as the next request.
"""

from __future__ import annotations

import asyncio
import http
import ssl
import weakref
from dataclasses import dataclass
from typing import Any

import httptools
import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState
from uvicorn.supervisors import Multiprocess

from ferry.proxy.errors import BUSY_RETRY_AFTER_SECONDS, STATUS, ErrorCode

# nginx's default (large_client_header_buffers 4 8k): any sane client's head fits.
MAX_HEAD_BYTES = 32 * 1024
# After a refusal, what is still read (and dropped) before the connection is aborted.
LINGER_SECONDS = 2.0
LINGER_BYTES = 512 * 1024
# A quiet close (an idle connection) waits this long for the TLS close_notify exchange.
CLOSE_GRACE_SECONDS = 1.0
# A body is progressing while each KiB of it comes within the body timeout: a byte
# every few seconds is no progress.
BODY_PROGRESS_BYTES = 1024
# Each request's first bytes of body are not counted against the body buffer:
# uvicorn buffers this much per connection anyway, and the connection cap bounds it.
FREE_BODY_BYTES = 64 * 1024
# Connections being refused (lingering) past the cap; past these, new ones are dropped.
REFUSING_AT_MOST = 64


@dataclass(frozen=True)
class Limits:
    """What one proxy process allows its clients (the FERRY_* settings of the same names)."""

    head_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 10.0
    keep_alive_seconds: float = 5.0
    max_connections: int = 1000
    body_buffer_bytes: int = 64 << 20

    @property
    def tick(self) -> float:
        """Seconds between sweeps: a limit is enforced within a quarter of itself (at most 1 s) late."""
        shortest = min(self.head_timeout_seconds, self.body_timeout_seconds, self.keep_alive_seconds)
        return min(1.0, max(0.05, shortest / 4))


DEFAULT_LIMITS = Limits()


class GatheringTransport:
    """A transport whose writes of one event-loop turn go out as one write."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class Guard:
    """One per uvicorn server (a process): the sweep over its connections, the bodies' count."""

    _of: weakref.WeakKeyDictionary[ServerState, Guard] = weakref.WeakKeyDictionary()

    def __init__(self, connections: set[Any], loop: asyncio.AbstractEventLoop, limits: Limits) -> None:
        self.connections = connections
        self.loop = loop
        self.limits = limits
        self.buffered = 0  # body bytes held past each request's free part, all connections
        self._sweep_at: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, state: ServerState, loop: asyncio.AbstractEventLoop, limits: Limits) -> Guard:
        guard = cls._of.get(state)
        if guard is None:
            guard = cls._of[state] = cls(state.connections, loop, limits)
        return guard

    def watch(self) -> None:
        """Make sure the sweep runs: it stops itself when no connection is left."""
        if self._sweep_at is None:
            self._sweep_at = self.loop.call_later(self.limits.tick, self._sweep)

    def _sweep(self) -> None:
        self._sweep_at = None
        now = self.loop.time()
        for connection in list(self.connections):
            if isinstance(connection, ProxyHttpProtocol):
                connection.check_clocks(now)
        if self.connections:
            self.watch()


class Refused(Exception):
    """Raised in a parser callback once the request is refused: stops the parser."""


def refusal(code: ErrorCode, detail: str, retry_after_seconds: int | None = None) -> bytes:
    """A whole JSON error answer that closes the connection."""
    status = STATUS[code]
    body = orjson.dumps({"error": code.value, "detail": detail})
    retry_after = b"retry-after: %d\r\n" % retry_after_seconds if retry_after_seconds is not None else b""
    return b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%sconnection: close\r\n\r\n%s" % (
        status,
        http.HTTPStatus(status).phrase.encode(),
        len(body),
        retry_after,
        body,
    )


def parse_error_reason(error: httptools.HttpParserError) -> str:
    """What httptools (llhttp) or a parser callback of uvicorn's said was wrong, in one short line."""
    cause = error.__context__ if isinstance(error, httptools.HttpParserCallbackError) else None
    reason = str(cause or error) or type(cause or error).__name__
    return reason if len(reason) <= 200 else reason[:197] + "..."


class ProxyHttpProtocol(HttpToolsProtocol):
    """httptools' protocol on a `GatheringTransport`, with heads capped, clients timed,
    connections and bodies counted, and refusals in JSON (see the module's docstring).

    The head cap is two checks, each on a lower bound of the header bytes received, so
    that neither can refuse a request under the cap: a head's size once it is whole,
    and the reads in a row that moved no request forward (began none, carried no body
    byte). httptools buffers a header or trailer line until it ends, so an endless line
    never makes a whole head; it cannot escape the second check, since only such lines
    (or chunk framing) make reads that move nothing.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        limits: Limits = getattr(self.config, "limits", DEFAULT_LIMITS)
        self._limits = limits
        self._guard = Guard.of(self.server_state, self.loop, limits)
        self._stalled_bytes = 0
        self._progressed = False
        self._closing = False  # refused or closing: what comes is dropped, the clocks stop
        self._deferred: bytes | None = None  # a refusal waiting for an earlier answer to go out
        self._dropped_bytes = 0
        now = self.loop.time()
        self._idle_since: float | None = now  # nothing of a request has come since
        self._head_since: float | None = now  # a head is due since (the connection, for the first)
        self._head_begun = False  # some of that head has come
        self._body_at = now  # the body last progressed
        self._body_bytes = 0  # this request's body so far
        self._body_unmarked = 0  # body bytes since it last progressed
        self._charged = 0  # this connection's bytes counted in the guard's buffered
        crowd = len(self.connections)
        super().connection_made(GatheringTransport(transport, self.loop))  # type: ignore[arg-type]
        if crowd >= limits.max_connections:
            if crowd >= limits.max_connections + REFUSING_AT_MOST:
                self._closing = True  # refusing costs a descriptor for a while: drop instead
                transport.abort()
                return
            detail = f"this proxy process holds its most connections ({limits.max_connections}, FERRY_MAX_CONNECTIONS)"
            self._refuse(ErrorCode.TOO_MANY_CONNECTIONS, detail, BUSY_RETRY_AFTER_SECONDS)
            return
        self._guard.watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._release()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._progressed = True
        self._idle_since = None
        self._head_begun = True
        if self._head_since is None:  # a later request: its head is timed from its first byte
            self._head_since = self.loop.time()

    def on_headers_complete(self) -> None:
        head_bytes = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if head_bytes > MAX_HEAD_BYTES:
            self._refuse_head_too_large()
            raise Refused  # stops the parser
        upgrade = self.parser.should_upgrade()
        if upgrade and self._has_body():
            # httptools skips the body of a request that asks to switch protocols, and
            # ferry switches to none: such a request would be served without its body.
            detail = "ferry does not switch protocols: send the request without Upgrade"
            self._refuse(ErrorCode.BAD_REQUEST, detail)
            raise Refused
        self._head_since = None
        self._head_begun = False
        self._body_at = self.loop.time()
        self._body_bytes = self._body_unmarked = 0
        super().on_headers_complete()
        if upgrade:  # served, but httptools reads nothing after it: the last on this connection
            self.cycle.keep_alive = False

    def on_body(self, body: bytes) -> None:
        self._progressed = True
        size = len(body)
        self._body_bytes += size
        if self._body_bytes > FREE_BODY_BYTES and not self.cycle.response_complete:
            self._charge(min(size, self._body_bytes - FREE_BODY_BYTES))
        self._body_unmarked += size
        if self._body_unmarked >= BODY_PROGRESS_BYTES:
            self._body_unmarked = 0
            self._body_at = self.loop.time()
        super().on_body(body)

    def data_received(self, data: bytes) -> None:
        # uvicorn's, without its keep-alive timer (the sweep keeps the clocks) and with
        # ferry's answers to what httptools refuses.
        if self._closing:  # lingering: read and drop, so that the answer is not lost to a reset
            self._dropped_bytes += len(data)
            if self._dropped_bytes > LINGER_BYTES:
                self.loop.call_soon(self.transport.abort)  # after the answer's flush, queued first
            return
        self._progressed = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # A request asking to switch protocols was served (see on_headers_complete);
            # httptools parses nothing after it, so nothing more is read.
            self._closing = True
            return
        except httptools.HttpParserError as error:
            if not self._closing:  # else ferry refused in a callback, and has answered
                self._refuse(ErrorCode.BAD_REQUEST, f"not a valid HTTP/1.1 request: {parse_error_reason(error)}")
            return
        if self._progressed:
            self._stalled_bytes = 0
        elif not self._closing:
            self._stalled_bytes += len(data)
            if self._stalled_bytes > MAX_HEAD_BYTES:
                self._refuse_head_too_large()

    def on_response_complete(self) -> None:
        # uvicorn's, without arming a keep-alive timer per answer (4 µs each, measured):
        # the sweep closes idle connections.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle.response_complete and cycle.more_body:
            # Answered before its body was read: what is left of the body would be taken
            # for the next request. Close, lingering as after a refusal.
            self._linger(b"")
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._deferred is not None:  # a refusal was waiting for the answers before it
            self._linger(self._deferred)
        else:
            self._release()
            if not self._head_begun:
                self._idle_since = self.loop.time()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown, closing idle connections without waiting on a client."""
        if self.cycle is None or self.cycle.response_complete:
            self._close_quietly()
        else:
            self.cycle.keep_alive = False

    def send_400_response(self, msg: str) -> None:
        """uvicorn's text/plain 400, should uvicorn still call it: ferry's JSON instead."""
        if not self._closing:
            self._refuse(ErrorCode.BAD_REQUEST, "not a valid HTTP/1.1 request")

    def check_clocks(self, now: float) -> None:
        """The guard's sweep: close this connection if its client is past a time limit."""
        if self._closing:
            return
        limits = self._limits
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:  # a request is in flight
            if cycle.more_body and not self.flow.read_paused and not cycle.waiting_for_100_continue:
                if now - self._body_at > limits.body_timeout_seconds:
                    detail = (
                        f"the request's body stalled: no {BODY_PROGRESS_BYTES} bytes of it came within "
                        f"{limits.body_timeout_seconds:g} s (FERRY_BODY_TIMEOUT_SECONDS)"
                    )
                    self._refuse(ErrorCode.REQUEST_TIMEOUT, detail, request=True)
                return
            # The app's turn, or ferry's (reading paused): the client's clocks stop.
            self._body_at = now
            if self._head_since is not None:
                self._head_since = now
            return
        if self._head_since is not None and now - self._head_since > limits.head_timeout_seconds:
            if self._head_begun:
                detail = (
                    f"the request's head did not come whole within {limits.head_timeout_seconds:g} s "
                    "(FERRY_HEAD_TIMEOUT_SECONDS)"
                )
                self._refuse(ErrorCode.REQUEST_TIMEOUT, detail)
            else:
                self._close_quietly()
        elif self._idle_since is not None and now - self._idle_since > limits.keep_alive_seconds:
            self._close_quietly()

    # Refusing and closing.

    def _refuse_head_too_large(self) -> None:
        detail = f"the request's header fields are over {MAX_HEAD_BYTES} bytes"
        self._refuse(ErrorCode.HEADERS_TOO_LARGE, detail)

    def _refuse(self, code: ErrorCode, detail: str, retry_after_seconds: int | None = None, *, request: bool = False) -> None:
        """Answer `code` and close. `request`: the refusal is of the request in flight (its
        body), which then sees a disconnect; else of the next one, answered after any in flight."""
        if self._closing:
            return
        self._closing = True
        self._release()
        answer = refusal(code, detail, retry_after_seconds)
        cycle = self.cycle
        if self.pipeline:
            # Earlier requests are being answered: the refusal goes out after the last of
            # them. One refused for its body is the newest queued: it is never started.
            if request and self.pipeline[0][0] is cycle:
                self.pipeline.popleft()
            self._deferred = answer
            return
        if cycle is not None and not cycle.response_complete:
            if not request and not cycle.more_body:
                self._deferred = answer  # of a later request: after the answer to the one in flight
                return
            # Of the request in flight (a parse error in its body is one too).
            cycle.disconnected = True  # its receive() says so, its send() writes nothing
            cycle.message_event.set()
            if cycle.response_started:  # no answer can be given whole any more
                self.transport.abort()
                return
        self._linger(answer)

    def _linger(self, answer: bytes) -> None:
        """Write the answer, read and drop what comes for a while, then abort.

        Closing at once, with the client's bytes still arriving, would reset the
        connection, and a reset can destroy the answer before the client reads it: linger
        first, as nginx does. Then abort: a TLS close would go on reading (and decrypting)
        whatever comes, waiting for the client's close_notify.
        """
        self._closing = True
        self._release()
        if answer:
            self.transport.write(answer)
        self.flow.resume_reading()  # what is read is dropped: reading paused would only stall
        self.loop.call_later(LINGER_SECONDS, self.transport.abort)

    def _close_quietly(self) -> None:
        """Close a connection that owes no answer; a client silent through the TLS close is aborted."""
        self._closing = True
        self._release()
        self.transport.close()
        self.loop.call_later(CLOSE_GRACE_SECONDS, self.transport.abort)

    # Counting bodies.

    def _charge(self, size: int) -> None:
        guard = self._guard
        if guard.buffered + size > guard.limits.body_buffer_bytes:
            detail = (
                f"this proxy process holds its most bytes of request bodies ({guard.limits.body_buffer_bytes}, "
                "FERRY_BODY_BUFFER_BYTES)"
            )
            self._refuse(ErrorCode.BODY_BUFFER_FULL, detail, BUSY_RETRY_AFTER_SECONDS, request=True)
            raise Refused
        guard.buffered += size
        self._charged += size

    def _release(self) -> None:
        if self._charged:
            self._guard.buffered -= self._charged
            self._charged = 0

    def _has_body(self) -> bool:
        for name, value in self.headers:
            if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
                return True
        return False


class ProxyConfig(uvicorn.Config):
    """uvicorn's config, with TLS 1.2 as the oldest protocol it will speak, and ferry's
    limits for `ProxyHttpProtocol`.

    uvicorn takes an `ssl_version` but no minimum: the floor is set on the
    context that `load` builds.
    """

    def __init__(self, app: Any, *, limits: Limits = DEFAULT_LIMITS, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits

    def load(self) -> None:
        super().load()
        if self.ssl is not None:
            self.ssl.minimum_version = ssl.TLSVersion.TLSv1_2


def serve(config: ProxyConfig) -> None:
    """Serve until SIGTERM/SIGINT: in this process, or in `config.workers` supervised ones.

    `uvicorn.run` would build its own `Config` and lose the TLS floor, so the
    multiprocess supervisor is started here on a socket bound once for all.
    """
    if config.workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        uvicorn.Server(config).run()
