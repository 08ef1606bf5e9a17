"""Main servers that misbehave on purpose: real sockets on loopback, real TLS (trustme).

Each runs in the test's own event loop (asyncio streams), so a test can await the
Deliverer and the server side by side. `answer` decides what one request gets; the
server records what arrived, the bytes it managed to send and its open connections.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trustme

GIB = 1024**3
CHUNK = b"x" * 65536


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    reader: asyncio.StreamReader = field(repr=False, compare=False)

    async def hang(self) -> None:
        """Answer nothing, until the client hangs up."""
        while await self.reader.read(65536):
            pass


@dataclass
class Tls:
    """PEM files: the CA a worker is told to trust, and the certificates servers present."""

    ca: Path
    other_ca: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path
    server: dict[str, trustme.LeafCert]
    authority: trustme.CA

    @classmethod
    def make(cls, directory: Path) -> Tls:
        ca, other = trustme.CA(), trustme.CA()
        client, stranger = ca.issue_cert("worker@example.test"), other.issue_cert("stranger@example.test")
        past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
        server = {
            "good": ca.issue_cert("127.0.0.1", "localhost"),
            "expired": ca.issue_cert("127.0.0.1", not_before=past - datetime.timedelta(days=30), not_after=past),
            "wrong name": ca.issue_cert("main.example.test"),
            "unknown CA": other.issue_cert("127.0.0.1", "localhost"),
        }

        def write(name: str, blob: trustme.Blob) -> Path:
            path = directory / name
            blob.write_to_path(str(path))
            return path

        return cls(
            ca=write("ca.pem", ca.cert_pem),
            other_ca=write("other-ca.pem", other.cert_pem),
            client_cert=write("client.pem", client.cert_chain_pems[0]),
            client_key=write("client.key", client.private_key_pem),
            stranger_cert=write("stranger.pem", stranger.cert_chain_pems[0]),
            stranger_key=write("stranger.key", stranger.private_key_pem),
            server=server,
            authority=ca,
        )


@dataclass
class MainServer:
    """A loopback HTTP/1.1 server; `answer(server, request, writer)` writes each response."""

    answer: Callable[[MainServer, Request, asyncio.StreamWriter], Awaitable[None]]
    requests: list[Request] = field(default_factory=list)
    connections: int = 0  # accepted so far
    open_connections: int = 0
    bytes_sent: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # a connection ended
    received: asyncio.Event = field(default_factory=asyncio.Event)  # a request arrived
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self, context: ssl.SSLContext | None) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        port = self._server.sockets[0].getsockname()[1]
        return f"{'https' if context else 'http'}://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.transport.abort()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        self._writers.add(writer)
        try:
            while request := await read_request(reader):
                self.requests.append(request)
                self.received.set()
                await self.answer(self, request, writer)
                if writer.is_closing():
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        finally:
            self.open_connections -= 1
            self._writers.discard(writer)
            self.closed.set()
            writer.close()

    async def send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        self.bytes_sent += len(data)


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1]
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(path, headers, body, reader)


def response(status: str, body: bytes = b"", *headers: str) -> bytes:
    extra = "".join(f"{header}\r\n" for header in headers)
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def server_context(tls: Tls, certificate: str = "good", *, require_client: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.server[certificate].configure_cert(context)
    if require_client:
        context.load_verify_locations(tls.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed server or a middlebox does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
