"""The Deliverer against main servers that misbehave, on both HTTP clients it can use.

Every case runs on pyreqwest and on aiohttp and must come to the same Verdict: what an
answer or a failure means is the delivery adapter's contract, not a client's. Real
sockets on loopback, real TLS with trustme certificates (tests/support/main_servers.py).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ferry import __version__
from ferry.queue.message import Message, new_message_id
from ferry.settings import Settings
from ferry.worker.delivery import ERROR_BODY_BYTES, Deliverer, Outcome, Verdict, chosen_client
from tests.support.main_servers import (
    CHUNK,
    GIB,
    MainServer,
    Request,
    Tls,
    reset,
    response,
    server_context,
)

CLIENTS = ["pyreqwest", "aiohttp"]
Answer = Callable[[MainServer, Request, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return Tls.make(tmp_path_factory.mktemp("delivery-tls"))


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def servers() -> AsyncIterator[list[MainServer]]:
    started: list[MainServer] = []
    yield started
    for server in started:
        await server.stop()


async def ok(server: MainServer, request: Request, writer: asyncio.StreamWriter) -> None:
    await server.send(writer, response("200 OK", b"{}"))


class Setup:
    """A main server and a Deliverer on `client` pointed at it."""

    def __init__(self, client: str, tls: Tls, servers: list[MainServer]) -> None:
        self.client, self.tls, self.servers = client, tls, servers

    async def server(
        self, answer: Answer = ok, *, certificate: str | None = "good", require_client: bool = False
    ) -> tuple[MainServer, str]:
        server = MainServer(answer)
        self.servers.append(server)
        context = server_context(self.tls, certificate, require_client=require_client) if certificate else None
        return server, await server.start(context)

    def settings(self, url: str, **env: Any) -> Settings:
        base: dict[str, Any] = {"MAIN_SERVER_URL": url, "FERRY_HTTP_CLIENT": self.client, "WORKER_CONCURRENCY": 4}
        if url.startswith("https://"):
            base["MAIN_SERVER_CA_FILE"] = str(self.tls.ca)
        return Settings(**{**base, **env})

    async def deliver(self, url: str, body: bytes = b'{"n": 1}', **env: Any) -> Outcome:
        async with Deliverer(self.settings(url, **env)) as deliverer:
            assert deliverer.client_name == self.client
            return await deliverer.deliver(message(body))


def message(body: bytes = b'{"n": 1}', attempt: int = 1) -> Message:
    return Message(new_message_id(), body, "application/json", attempt, 0)


@pytest.fixture
def setup(client: str, tls: Tls, servers: list[MainServer]) -> Setup:
    return Setup(client, tls, servers)


# -- what arrives, and how answers are judged -------------------------------------------


async def test_a_2xx_is_delivered_with_ferrys_headers_and_the_exact_body(setup: Setup) -> None:
    server, url = await setup.server()
    body = bytes(range(256)) * 3  # not UTF-8: sent as the bytes they are
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    async with Deliverer(setup.settings(url, FERRY_SIGNING_SECRET=secret)) as deliverer:
        sent = Message(new_message_id(), body, "application/octet-stream", 3, 0)
        outcome = await deliverer.deliver(sent)

    assert outcome == Outcome(Verdict.DELIVERED, status=200)
    [request] = server.requests
    assert request.body == body and request.path == "/hook"
    headers = request.headers
    assert headers["content-type"] == "application/octet-stream"
    assert headers["x-message-id"] == headers["idempotency-key"] == headers["webhook-id"] == sent.id
    assert headers["x-attempt"] == "3"
    assert headers["user-agent"] == f"ferry/{__version__}"
    assert headers["webhook-signature"].startswith("v1,")


@pytest.mark.parametrize(
    "status, extra, verdict, retry_after",
    [
        ("201 Created", (), Verdict.DELIVERED, None),
        ("204 No Content", (), Verdict.DELIVERED, None),
        ("202 Accepted", ("Retry-After: 30",), Verdict.DELIVERED, None),  # a 2xx's Retry-After is nothing
        ("404 Not Found", (), Verdict.PERMANENT, None),
        ("422 Unprocessable Entity", (), Verdict.PERMANENT, None),
        ("429 Too Many Requests", ("Retry-After: 7",), Verdict.RETRY, 7.0),
        ("503 Service Unavailable", ("Retry-After: 2",), Verdict.RETRY, 2.0),
        ("500 Internal Server Error", (), Verdict.RETRY, None),
    ],
)
async def test_answers_are_judged_alike(
    setup: Setup, status: str, extra: tuple[str, ...], verdict: Verdict, retry_after: float | None
) -> None:
    body = b"" if status.startswith("204") else b"why: " + b"e" * 2000

    async def answer(server: MainServer, request: Request, writer: asyncio.StreamWriter) -> None:
        await server.send(writer, response(status, body, *extra))

    _, url = await setup.server(answer)
    outcome = await setup.deliver(url)
    assert (outcome.verdict, outcome.status, outcome.retry_after_seconds) == (verdict, int(status[:3]), retry_after)
    if verdict is not Verdict.DELIVERED:
        assert outcome.error == f"HTTP {status[:3]}: " + body[:ERROR_BODY_BYTES].decode()


@pytest.mark.parametrize("status", ["301 Moved Permanently", "302 Found", "303 See Other", "307 Temporary Redirect",
                                    "308 Permanent Redirect"])
async def test_a_redirect_is_not_followed_and_is_retried(setup: Setup, status: str) -> None:
    async def answer(server: MainServer, request: Request, writer: asyncio.StreamWriter) -> None:
        if request.path == "/hook":
            await server.send(writer, response(status, b"moved", "Location: /elsewhere"))
        else:
            await ok(server, request, writer)

    server, url = await setup.server(answer)
    outcome = await setup.deliver(url)
    assert outcome.verdict is Verdict.RETRY and outcome.error == f"HTTP {status[:3]}: moved"
    assert [r.path for r in server.requests] == ["/hook"]


async def test_the_urls_password_and_query_are_not_in_an_error(setup: Setup) -> None:
    _, url = await setup.server(certificate="unknown CA")
    secret_url = url.replace("https://", "https://ferry:s3cret-pass@") + "?token=s3cret-token"
    outcome = await setup.deliver(secret_url)
    assert outcome.verdict is Verdict.RETRY and outcome.error
    assert "s3cret" not in outcome.error


async def test_credentials_in_the_url_are_sent_as_basic_auth(setup: Setup) -> None:
    server, url = await setup.server()
    outcome = await setup.deliver(url.replace("https://", "https://ferry:pass@"))
    assert outcome.verdict is Verdict.DELIVERED
    assert server.requests[0].headers["authorization"] == "Basic " + base64.b64encode(b"ferry:pass").decode()


# -- TLS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("certificate", ["unknown CA", "expired", "wrong name"])
async def test_a_certificate_the_worker_must_not_trust_is_retried_and_nothing_is_sent(
    setup: Setup, certificate: str
) -> None:
    server, url = await setup.server(certificate=certificate)
    outcome = await setup.deliver(url)
    assert outcome.verdict is Verdict.RETRY and outcome.status is None and outcome.error
    assert server.requests == []


async def test_a_ca_bundle_is_trusted_whole(setup: Setup, tmp_path: Path) -> None:
    """MAIN_SERVER_CA_FILE with two CAs: the server's is the second (pyreqwest takes one a call)."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(setup.tls.other_ca.read_bytes() + setup.tls.ca.read_bytes())
    server, url = await setup.server()
    outcome = await setup.deliver(url, MAIN_SERVER_CA_FILE=str(bundle))
    assert outcome.verdict is Verdict.DELIVERED and len(server.requests) == 1


@pytest.mark.parametrize("presented", ["none", "stranger"])
async def test_mtls_without_an_accepted_client_certificate_is_retried(setup: Setup, presented: str) -> None:
    server, url = await setup.server(require_client=True)
    env = {}
    if presented == "stranger":
        env = {"MAIN_SERVER_CERT_FILE": str(setup.tls.stranger_cert), "MAIN_SERVER_KEY_FILE": str(setup.tls.stranger_key)}
    outcome = await setup.deliver(url, **env)
    assert outcome.verdict is Verdict.RETRY and outcome.status is None
    assert server.requests == []


async def test_mtls_with_the_workers_certificate_is_delivered(setup: Setup) -> None:
    server, url = await setup.server(require_client=True)
    outcome = await setup.deliver(
        url, MAIN_SERVER_CERT_FILE=str(setup.tls.client_cert), MAIN_SERVER_KEY_FILE=str(setup.tls.client_key)
    )
    assert outcome.verdict is Verdict.DELIVERED and len(server.requests) == 1


def test_auto_picks_pyreqwest_unless_a_ca_file_must_be_trusted_alone(tls: Tls) -> None:
    url = "https://main.example.test/hook"
    assert chosen_client(Settings(MAIN_SERVER_URL=url)) == "pyreqwest"  # type: ignore[call-arg]
    assert chosen_client(Settings(MAIN_SERVER_URL=url, MAIN_SERVER_CA_FILE=str(tls.ca))) == "aiohttp"  # type: ignore[call-arg]
    pinned = Settings(MAIN_SERVER_URL=url, MAIN_SERVER_CA_FILE=str(tls.ca), FERRY_HTTP_CLIENT="pyreqwest")  # type: ignore[call-arg]
    assert chosen_client(pinned) == "pyreqwest"


# -- large, slow, hung and broken answers -------------------------------------------------


async def endless(server: MainServer, writer: asyncio.StreamWriter, status: str) -> None:
    """Headers announcing a 1 GiB body, then body until the client goes away."""
    await server.send(writer, f"HTTP/1.1 {status}\r\nContent-Length: {GIB}\r\n\r\n".encode())
    while server.bytes_sent < GIB:
        await server.send(writer, CHUNK)


@pytest.mark.parametrize("status, verdict", [("500 Internal Server Error", Verdict.RETRY), ("200 OK", Verdict.DELIVERED)])
async def test_an_enormous_answer_is_read_no_further_than_the_cap(setup: Setup, status: str, verdict: Verdict) -> None:
    async def answer(server: MainServer, request: Request, writer: asyncio.StreamWriter) -> None:
        await endless(server, writer, status)

    server, url = await setup.server(answer)
    outcome = await setup.deliver(url, FERRY_DELIVERY_TIMEOUT_SECONDS=20)
    assert outcome.verdict is verdict
    if verdict is Verdict.RETRY:
        assert outcome.error == "HTTP 500: " + "x" * ERROR_BODY_BYTES
    await asyncio.wait_for(server.closed.wait(), 10)  # the client dropped the connection
    assert server.bytes_sent < 64 * 1024**2  # socket buffers' worth, not the gigabyte


async def test_a_server_that_never_answers_times_out_and_is_retried(setup: Setup) -> None:
    async def answer(server: MainServer, request: Request, writer: asyncio.StreamWriter) -> None:
        await request.hang()

    server, url = await setup.server(answer)
    outcome = await setup.deliver(url, FERRY_DELIVERY_TIMEOUT_SECONDS=0.5)
    assert outcome == Outcome(Verdict.RETRY, "timed out after 0.5 s")
    assert len(server.requests) == 1


async def test_an_error_body_that_stalls_is_judged_on_what_arrived(setup: Setup) -> None:
    async def answer(server: MainServer, request: Request, writer: asyncio.StreamWriter) -> None:
        await server.send(writer, b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 1000\r\n\r\nstarted")
        await request.hang()

    _, url = await setup.server(answer)
    outcome = await setup.deliver(url, FERRY_DELIVERY_TIMEOUT_SECONDS=5)
    assert outcome == Outcome(Verdict.RETRY, "HTTP 500: started", 500)


async def test_a_slow_answer_within_the_timeout_is_delivered(setup: Setup) -> None:
    async def answer(server: MainServer, request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.5)
        await ok(server, request, writer)

    _, url = await setup.server(answer)
    assert (await setup.deliver(url, FERRY_DELIVERY_TIMEOUT_SECONDS=5)).verdict is Verdict.DELIVERED


async def test_a_reset_before_the_answer_is_retried(setup: Setup) -> None:
    async def answer(server: MainServer, request: Request, writer: asyncio.StreamWriter) -> None:
        reset(writer)

    server, url = await setup.server(answer)
    outcome = await setup.deliver(url)
    assert outcome.verdict is Verdict.RETRY and outcome.status is None and outcome.error
    assert len(server.requests) >= 1


async def test_a_reset_mid_error_body_is_retried(setup: Setup) -> None:
    async def answer(server: MainServer, request: Request, writer: asyncio.StreamWriter) -> None:
        await server.send(writer, b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 1000\r\n\r\npartial")
        await asyncio.sleep(0.05)
        reset(writer)

    _, url = await setup.server(answer)
    outcome = await setup.deliver(url)
    assert outcome.verdict is Verdict.RETRY


async def test_a_keep_alive_connection_the_server_closed_while_idle_is_not_reused(setup: Setup) -> None:
    async def answer(server: MainServer, request: Request, writer: asyncio.StreamWriter) -> None:
        await ok(server, request, writer)
        await asyncio.sleep(0.1)
        writer.close()  # keep-alive was not refused, but the server hangs up once idle

    server, url = await setup.server(answer)
    async with Deliverer(setup.settings(url)) as deliverer:
        assert (await deliverer.deliver(message())).verdict is Verdict.DELIVERED
        await asyncio.wait_for(server.closed.wait(), 5)
        await asyncio.sleep(0.2)  # the close has reached the client
        assert (await deliverer.deliver(message())).verdict is Verdict.DELIVERED
    assert server.connections == 2 and len(server.requests) == 2


async def test_connection_refused_is_retried(setup: Setup) -> None:
    server, url = await setup.server()
    await server.stop()
    outcome = await setup.deliver(url)
    assert outcome.verdict is Verdict.RETRY and outcome.status is None and outcome.error


# -- cancellation ----------------------------------------------------------------------


async def test_a_cancelled_delivery_returns_at_once_and_its_request_ends_by_the_timeout(setup: Setup) -> None:
    """What a worker's forced shutdown does to a delivery under way (Worker._drain cancels it).

    aiohttp hangs up at once; pyreqwest 0.15 lets the request run on in its runtime until
    the delivery timeout (ferry.adapters.pyreqwest says why), never longer."""

    async def answer(server: MainServer, request: Request, writer: asyncio.StreamWriter) -> None:
        await request.hang()

    timeout = 2.0
    server, url = await setup.server(answer)
    async with Deliverer(setup.settings(url, FERRY_DELIVERY_TIMEOUT_SECONDS=timeout)) as deliverer:
        delivery = asyncio.create_task(deliverer.deliver(message()))
        await asyncio.wait_for(server.received.wait(), 10)
        delivery.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(delivery, 1)
        await asyncio.wait_for(server.closed.wait(), 1 if setup.client == "aiohttp" else timeout + 3)
        assert server.open_connections == 0
        server.answer = ok  # and the Deliverer still delivers
        assert (await deliverer.deliver(message())).verdict is Verdict.DELIVERED


async def test_a_2xx_is_delivered_on_its_headers_whatever_its_body_does(setup: Setup) -> None:
    async def answer(server: MainServer, request: Request, writer: asyncio.StreamWriter) -> None:
        await server.send(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        await request.hang()

    _, url = await setup.server(answer)
    assert (await setup.deliver(url, FERRY_DELIVERY_TIMEOUT_SECONDS=5)) == Outcome(Verdict.DELIVERED, status=200)
