"""Canary for ferry.adapters.pyreqwest: fails loudly when pyreqwest no longer behaves as the adapter expects.

tests/worker/test_delivery.py holds the contract (every failure mode, on both clients);
these pin the library's own behaviour the adapter is built on, so that a new release
that changes one says which.
"""

from __future__ import annotations

import asyncio
import ssl
from datetime import timedelta
from pathlib import Path

import pytest
from pyreqwest.client import ClientBuilder
from pyreqwest.exceptions import ConnectError, PyreqwestError, RequestTimeoutError

from ferry.adapters.pyreqwest import describe, pem_certificates
from tests.support.main_servers import MainServer, Request, Tls, response, server_context


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return Tls.make(tmp_path_factory.mktemp("canary-tls"))


async def serve(server: MainServer, context: ssl.SSLContext | None) -> str:
    return await server.start(context)


def test_the_exception_classes_the_adapter_catches() -> None:
    assert issubclass(RequestTimeoutError, PyreqwestError) and issubclass(RequestTimeoutError, TimeoutError)
    assert issubclass(ConnectError, PyreqwestError)


async def test_an_unknown_issuer_is_a_connect_error_whose_last_cause_says_so(tls: Tls) -> None:
    server = MainServer(lambda *args: asyncio.sleep(0))
    url = await serve(server, server_context(tls, "unknown CA"))
    client = ClientBuilder().add_root_certificate_pem(tls.ca.read_bytes()).build()
    try:
        with pytest.raises(ConnectError) as raised:
            await client.post(url).body_bytes(b"x").build().send()
        assert describe(raised.value) == "ConnectError: invalid peer certificate: UnknownIssuer"
    finally:
        await client.close()
        await server.stop()


async def test_a_root_certificate_is_added_to_the_systems_store_not_in_its_place(
    tls: Tls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why `auto` picks aiohttp when MAIN_SERVER_CA_FILE is set: pyreqwest 0.15 trusts the CA
    file *and* the system's store (here SSL_CERT_FILE, read on Linux). When this fails,
    pyreqwest can trust a CA alone: let auto pick it with a CA file too."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca))  # the "system" store trusts the server's CA
    server = MainServer(lambda server, request, writer: server.send(writer, response("200 OK", b"{}")))
    url = await serve(server, server_context(tls, "good"))
    client = ClientBuilder().add_root_certificate_pem(tls.other_ca.read_bytes()).build()
    try:
        answer = await client.post(url).body_bytes(b"x").build().send()
        assert answer.status == 200
    finally:
        await client.close()
        await server.stop()


def test_a_pem_bundle_is_split_into_its_certificates(tls: Tls) -> None:
    bundle = tls.ca.read_bytes() + b"\n" + tls.other_ca.read_bytes()
    assert pem_certificates(bundle) == [tls.ca.read_bytes().strip(), tls.other_ca.read_bytes().strip()]


async def test_a_streamed_answer_with_no_read_buffer_comes_back_on_its_headers(tls: Tls) -> None:
    async def answer(server: MainServer, request: Request, writer: asyncio.StreamWriter) -> None:
        await server.send(writer, b"HTTP/1.1 500 Oops\r\nContent-Length: 1000\r\n\r\nfirst")
        await request.hang()

    server = MainServer(answer)
    url = await serve(server, None)
    client = ClientBuilder().timeout(timedelta(seconds=5)).build()
    try:
        request = client.post(url).body_bytes(b"x").streamed_read_buffer_limit(0).build_streamed()
        async with request as answered:
            assert answered.status == 500
            assert bytes(await answered.body_reader.read_chunk() or b"") == b"first"
    finally:
        await client.close()
        await server.stop()


async def test_a_cancelled_request_runs_on_until_its_timeout() -> None:
    """pyreqwest 0.15 detaches a cancelled request's task (the adapter's docstring). When this
    fails, cancellation stops the request at once: drop the caveat from the adapter and docs."""

    async def answer(server: MainServer, request: Request, writer: asyncio.StreamWriter) -> None:
        await request.hang()

    server = MainServer(answer)
    url = await serve(server, None)
    client = ClientBuilder().timeout(timedelta(seconds=1.5)).build()
    try:
        sending = asyncio.create_task(client.post(url).body_bytes(b"x").build().send())
        await asyncio.wait_for(server.received.wait(), 5)
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        await asyncio.sleep(0.5)
        assert server.open_connections == 1  # still there after the cancel
        await asyncio.wait_for(server.closed.wait(), 5)  # gone by the timeout
    finally:
        await client.close()
        await server.stop()
