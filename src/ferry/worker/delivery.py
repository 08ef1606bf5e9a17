"""Delivery to the main server: one pooled keep-alive HTTPS client, and what an answer means.

The client is pyreqwest (ferry.adapters.pyreqwest) or aiohttp (here), per FERRY_HTTP_CLIENT;
both keep one contract (`HttpClient`), so an answer or a failure is judged the same whichever
carried it (tests/worker/test_delivery.py runs every failure mode against both).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import importlib.util
import ssl
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import TYPE_CHECKING, Literal, Protocol

from ferry import __version__
from ferry.queue.message import Message
from ferry.settings import Settings, scrub

if TYPE_CHECKING:
    import aiohttp

# Answers that say "not now" rather than "never": retried like a 5xx.
RETRYABLE_4XX = frozenset({408, 425, 429})
# Enough of an error answer's body to explain it in the message's last_error.
ERROR_BODY_BYTES = 512


class Verdict(Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to, and what the main server asked for."""

    verdict: Verdict
    error: str = ""
    status: int | None = None
    retry_after_seconds: float | None = None


# One outcome per 2xx status, made once: judging a delivery makes nothing.
_DELIVERED = {status: Outcome(Verdict.DELIVERED, status=status) for status in range(200, 300)}


def judge(status: int, retry_after: str | None, body: bytes) -> Outcome:
    """2xx delivered; 5xx, 408, 425, 429 (and anything odd) retried; other 4xx permanent."""
    if 200 <= status < 300:
        return _DELIVERED[status]
    error = f"HTTP {status}"
    if body:
        error += ": " + body[:ERROR_BODY_BYTES].decode(errors="replace")
    if 400 <= status < 500 and status not in RETRYABLE_4XX:
        return Outcome(Verdict.PERMANENT, error, status)
    return Outcome(Verdict.RETRY, error, status, parse_retry_after(retry_after))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def signature_headers(key: bytes, message_id: str, body: bytes) -> dict[str, str]:
    """Standard Webhooks headers. Signed over raw bytes: a body need not be UTF-8."""
    timestamp = str(int(time.time()))
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def client_tls_context(settings: Settings) -> ssl.SSLContext:
    """Verify the main server against MAIN_SERVER_CA_FILE alone (or the system's CAs); mTLS if given."""
    context = ssl.create_default_context(
        cafile=str(settings.main_server_ca_file) if settings.main_server_ca_file else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.main_server_cert_file and settings.main_server_key_file:
        context.load_cert_chain(settings.main_server_cert_file, settings.main_server_key_file)
    return context


@dataclass(frozen=True, slots=True)
class Answer:
    """What the main server answered: the status, its Retry-After, the start of an error's body."""

    status: int
    retry_after: str | None
    excerpt: bytes


class PostFailed(Exception):
    """No answer: the connection, TLS or the HTTP exchange failed. The message is the error to record."""


class PostTimedOut(Exception):
    """No answer within FERRY_DELIVERY_TIMEOUT_SECONDS."""


class HttpClient(Protocol):
    """One pooled keep-alive client to MAIN_SERVER_URL. Redirects are not followed, bodies are
    not decompressed, at most ERROR_BODY_BYTES of an error's body are read; a library's errors
    are raised as PostFailed or PostTimedOut, never as its own classes."""

    async def post(self, body: bytes, headers: dict[str, str]) -> Answer: ...

    async def close(self) -> None: ...


def user_agent() -> str:
    return f"ferry/{__version__}"


class AiohttpClient:
    """aiohttp: trusts MAIN_SERVER_CA_FILE alone; the fallback where pyreqwest is not used.

    Imported here, not at the top: a worker on pyreqwest need not load it (0.2 s of every start).
    """

    def __init__(self, settings: Settings) -> None:
        import aiohttp

        assert settings.main_server_url is not None
        self._failures = (aiohttp.ClientError, ssl.SSLError, OSError)
        self.url = settings.main_server_url
        self._timeout = aiohttp.ClientTimeout(total=settings.delivery_timeout_seconds)
        tls = client_tls_context(settings) if self.url.startswith("https://") else None
        connector = aiohttp.TCPConnector(limit=settings.worker_concurrency, ssl=tls or True, keepalive_timeout=30)
        self._session: aiohttp.ClientSession = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            headers={"User-Agent": user_agent()},
            auto_decompress=False,
        )

    async def post(self, body: bytes, headers: dict[str, str]) -> Answer:
        try:
            async with self._session.post(self.url, data=body, headers=headers, allow_redirects=False) as response:
                if response.status < 300:  # as pyreqwest's: what a 2xx says besides its status is not read
                    return Answer(response.status, None, b"")
                excerpt = await response.content.read(ERROR_BODY_BYTES)
                return Answer(response.status, response.headers.get("Retry-After"), excerpt)
        except asyncio.TimeoutError as error:
            raise PostTimedOut() from error
        except self._failures as error:
            raise PostFailed(f"{type(error).__name__}: {error}") from error

    async def close(self) -> None:
        await self._session.close()


def chosen_client(settings: Settings) -> Literal["pyreqwest", "aiohttp"]:
    """FERRY_HTTP_CLIENT, with auto resolved: pyreqwest where it and uvloop are installed and no
    CA file narrows trust. Under asyncio's own loop (Windows) a process that used pyreqwest 0.15
    aborted at exit in about half the runs here (PyGILState_Release while finalizing), never under
    uvloop; an abort is exit 134, which a supervisor takes for a crash."""
    if settings.http_client != "auto":
        return settings.http_client
    if settings.main_server_ca_file is None and installed("pyreqwest") and installed("uvloop"):
        return "pyreqwest"
    return "aiohttp"


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def open_client(settings: Settings) -> HttpClient:
    if chosen_client(settings) == "pyreqwest":
        from ferry.adapters.pyreqwest import PyreqwestClient

        return PyreqwestClient(settings)
    return AiohttpClient(settings)


class Deliverer:
    """POSTs messages to MAIN_SERVER_URL over one pool of keep-alive connections."""

    def __init__(self, settings: Settings) -> None:
        assert settings.main_server_url is not None
        self.settings = settings
        self.url = settings.main_server_url
        self.signing_key = settings.signing_key
        self.client_name = chosen_client(settings)
        self._client: HttpClient | None = None

    async def __aenter__(self) -> Deliverer:
        self._client = open_client(self.settings)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None:
            await self._client.close()

    async def deliver(self, message: Message) -> Outcome:
        """One attempt; never raises for the main server's sake, it says what happened."""
        assert self._client is not None, "use Deliverer as an async context manager"
        headers = {
            "Content-Type": message.content_type,
            "X-Message-Id": message.id,
            "X-Attempt": str(message.attempt),
            "Idempotency-Key": message.id,
        }
        if self.signing_key is not None:
            headers |= signature_headers(self.signing_key, message.id, message.body)
        try:
            answer = await self._client.post(message.body, headers)
        except PostTimedOut:
            return Outcome(Verdict.RETRY, f"timed out after {self.settings.delivery_timeout_seconds} s")
        except PostFailed as error:
            # The error becomes the message's last_error and log lines: whatever said it (a
            # client names the URL in some errors), the URL's password and query string (a
            # token, often) are not in it.
            return Outcome(Verdict.RETRY, scrub(str(error), self.url))
        outcome = judge(answer.status, answer.retry_after, answer.excerpt)
        # A main server may echo the URL in its error's body.
        return replace(outcome, error=scrub(outcome.error, self.url)) if outcome.error else outcome
