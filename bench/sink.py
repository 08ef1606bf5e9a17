"""The fast HTTP sink every benchmark delivers into, and the clock that times them.

One process, uvloop and httptools, no framework: any POST is answered `200 {}` at once on
a keep-alive connection, so the sink costs each system under test the same little. Each
body carries its message number and the time it was scheduled (see bench/bodies.py):
the sink counts unique arrivals and duplicates, notes the first and last unique arrival
(CLOCK_MONOTONIC, the same clock in every process of the machine) and, for bodies
with a schedule time, the delay from it to arrival.

    GET /stats       {"unique", "duplicates", "first", "last"}
    GET /latencies   [seconds, ...] of the unique arrivals that had a schedule time
    POST /reset      forget everything
    POST /reject     answered 400 and not recorded (what makes a worker dead-letter)

    python -m bench.sink --port P --control-port Q [--certfile C --keyfile K [--client-ca CA]]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import time

import httptools
import uvloop

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
REJECTED = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Record:
    """What arrived: one instance per sink process."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.seen: set[bytes] = set()
        self.duplicates = 0
        self.first = 0.0
        self.last = 0.0
        self.latencies: list[float] = []

    def arrive(self, body: bytes) -> None:
        now = time.monotonic()
        number = body[7:15]  # b'{"id":"00000001","t":...' (bench/bodies.py)
        if number in self.seen:
            self.duplicates += 1
            return
        self.seen.add(number)
        if not self.first:
            self.first = now
        self.last = now
        scheduled = float(body[21:38])
        if scheduled:
            self.latencies.append(now - scheduled)

    def answer(self, method: bytes, path: bytes) -> bytes:
        if method == b"GET" and path == b"/stats":
            payload = {
                "unique": len(self.seen),
                "duplicates": self.duplicates,
                "first": self.first,
                "last": self.last,
            }
        elif method == b"GET" and path == b"/latencies":
            payload = self.latencies  # type: ignore[assignment]
        else:
            if path == b"/reset":
                self.reset()
            return OK
        data = json.dumps(payload).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            len(data),
            data,
        )


class SinkProtocol(asyncio.Protocol):
    def __init__(self, record: Record) -> None:
        self.record = record
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_begin(self) -> None:
        self.url, self.body = b"", []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        assert self.transport is not None
        if self.url == b"/reject":  # a permanent refusal: makes dead letters
            self.transport.write(REJECTED)
        else:
            if method == b"POST" and self.url != b"/reset":
                self.record.arrive(b"".join(self.body))
            self.transport.write(self.record.answer(method, self.url))
        if not self.parser.should_keep_alive():
            self.transport.close()


async def serve(port: int, control_port: int, context: ssl.SSLContext | None) -> None:
    record = Record()
    loop = asyncio.get_running_loop()
    control = await loop.create_server(lambda: SinkProtocol(record), "127.0.0.1", control_port)
    server = await loop.create_server(
        lambda: SinkProtocol(record), "127.0.0.1", port, ssl=context, backlog=1024
    )
    async with control, server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True, help="plain HTTP, for /stats")
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    parser.add_argument("--client-ca", help="require a client certificate of this CA (mTLS)")
    args = parser.parse_args()
    context = None
    if args.certfile:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.certfile, args.keyfile)
        if args.client_ca:
            context.load_verify_locations(args.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    uvloop.run(serve(args.port, args.control_port, context))


if __name__ == "__main__":
    main()
