"""ferry verify's look at the main server: its certificate read over a real TLS handshake
(expiry, names, whether it verifies), and what the diagnosis says of it."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
import trustme

from ferry.observe.diagnosis import Evidence, diagnose
from ferry.observe.probes import MainServerProbe, probe_main_server
from tests.support.servers import free_port


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readline()
    writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()
    writer.close()


@pytest.fixture
async def tls_server() -> AsyncIterator[Callable[..., Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def start(ca: trustme.CA, *names: str, days: float = 365) -> int:
        cert = ca.issue_cert(*names, not_after=datetime.now(UTC) + timedelta(days=days))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        port = free_port()
        servers.append(await asyncio.start_server(answer, "127.0.0.1", port, ssl=context))
        return port

    yield start
    for server in servers:
        server.close()


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def codes(probe: MainServerProbe) -> dict[str, str]:
    return {f.code: f.message for f in diagnose(None, None, None, Evidence(main_server=probe, cert_days=14))}


async def test_a_certificate_expiring_soon_is_named_with_its_expiry_and_host_names(tls_server) -> None:  # type: ignore[no-untyped-def]
    ca = trustme.CA()
    port = await tls_server(ca, "localhost", days=3)
    probe = await probe_main_server(f"https://localhost:{port}/webhook", trusting(ca))
    assert probe.reachable and probe.status == 405  # any HTTP answer: it answers
    assert probe.certificate is not None and probe.certificate.verified
    assert 2.9 < probe.certificate.days_left < 3.1 and probe.certificate.host_names == ["localhost"]
    assert "expires in 3.0 days" in codes(probe)["main_server_certificate_expiring"]


async def test_a_certificate_that_does_not_verify_is_read_anyway_and_said_why(tls_server) -> None:  # type: ignore[no-untyped-def]
    ca, stranger = trustme.CA(), trustme.CA()
    unknown = await tls_server(stranger, "localhost")
    probe = await probe_main_server(f"https://localhost:{unknown}/", trusting(ca))
    assert probe.reachable and probe.certificate is not None and not probe.certificate.verified
    assert "unable to get local issuer certificate" in codes(probe)["main_server_certificate_invalid"]
    wrong_name = await tls_server(ca, "elsewhere.example")
    probe = await probe_main_server(f"https://localhost:{wrong_name}/", trusting(ca))
    message = codes(probe)["main_server_certificate_invalid"]
    assert "Hostname mismatch" in message and "elsewhere.example" in message


async def test_nobody_listening_is_unreachable() -> None:
    probe = await probe_main_server(f"http://127.0.0.1:{free_port()}/webhook", None)
    assert not probe.reachable and probe.certificate is None
    assert "main_server_unreachable" in codes(probe)
