"""uvicorn: its httptools protocol with two changes (a response goes out in one write, and
a request's head is capped), TLS 1.2 as the oldest protocol, and its process supervisor.

The internals used: `HttpToolsProtocol`'s callbacks (`connection_made`,
`on_message_begin`, `on_headers_complete`, `on_body`, `data_received`,
`send_400_response`) and attributes (`url`, `headers`, `transport`, `loop`);
`Config.load` and the `ssl` context it builds; `uvicorn.supervisors.Multiprocess`.

uvicorn writes a response's head and its body as two transport writes, and
uvloop sends each at once: two syscalls, two TCP segments (two TLS records
over HTTPS) for every 202, and the client reads twice. Profiled under load,
those writes were the largest single cost of the ingest route. Here writes are
gathered and sent once, at the next turn of the event loop, so a response goes
out whole; a streamed response still goes out chunk by chunk, one turn apart.

Neither uvicorn nor httptools limits a request's header fields: a client could
send a gigabyte of headers (or of chunked trailers) and httptools would buffer
it all. Here header fields over `MAX_HEAD_BYTES` are answered
`431 headers_too_large` and the connection closed.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

from ferry.proxy.errors import STATUS, ErrorCode

# nginx's default (large_client_header_buffers 4 8k): any sane client's head fits.
MAX_HEAD_BYTES = 32 * 1024
# After a 431, what is still read (and dropped) before the connection is closed.
LINGER_SECONDS = 2.0
LINGER_BYTES = 512 * 1024


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


class HeadTooLarge(Exception):
    pass


class ProxyHttpProtocol(HttpToolsProtocol):
    """httptools' protocol on a `GatheringTransport`, with header fields capped.

    Two checks, each on a lower bound of the header bytes received, so that
    neither can refuse a request under the cap: a head's size once it is whole,
    and the reads in a row that moved no request forward (began none, carried no
    body byte). httptools buffers a header or trailer line until it ends, so an
    endless line never makes a whole head; it cannot escape the second check,
    since only such lines (or chunk framing) make reads that move nothing.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._stalled_bytes = 0
        self._progressed = False
        self._head_too_large = False
        self._linger_bytes_left = 0
        super().connection_made(GatheringTransport(transport, self.loop))  # type: ignore[arg-type]

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._progressed = True

    def on_headers_complete(self) -> None:
        head_bytes = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if head_bytes > MAX_HEAD_BYTES:
            self._head_too_large = True
            raise HeadTooLarge  # stops the parser; uvicorn then calls send_400_response
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._progressed = True
        super().on_body(body)

    def data_received(self, data: bytes) -> None:
        if self._head_too_large:  # lingering: read and drop, so the 431 is not lost to a reset
            self._linger_bytes_left -= len(data)
            if self._linger_bytes_left < 0:
                self.loop.call_soon(self.transport.abort)  # after the 431's flush, queued first
            return
        self._progressed = False
        super().data_received(data)
        if self._progressed:
            self._stalled_bytes = 0
        elif not self._head_too_large:
            self._stalled_bytes += len(data)
            if self._stalled_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self._head_too_large = True
                self.send_400_response("")

    def send_400_response(self, msg: str) -> None:
        if not self._head_too_large:
            super().send_400_response(msg)
            return
        code = ErrorCode.HEADERS_TOO_LARGE
        detail = f"the request's header fields are over {MAX_HEAD_BYTES} bytes"
        body = orjson.dumps({"error": code.value, "detail": detail})
        head = (
            b"HTTP/1.1 %d Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % (STATUS[code], len(body))
        )
        self.transport.write(head + body)
        # Closing now, with the client's bytes still arriving, would reset the connection,
        # and a reset can destroy the 431 before the client reads it: linger first, as nginx
        # does. Then abort: a TLS close would go on reading (and decrypting) whatever comes,
        # waiting for the client's close_notify.
        self._linger_bytes_left = LINGER_BYTES
        self.loop.call_later(LINGER_SECONDS, self.transport.abort)


class ProxyConfig(uvicorn.Config):
    """uvicorn's config, with TLS 1.2 as the oldest protocol it will speak.

    uvicorn takes an `ssl_version` but no minimum: the floor is set on the
    context that `load` builds.
    """

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
