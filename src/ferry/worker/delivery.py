"""Delivery to the main server: one pooled keep-alive HTTPS client, and what an answer means."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ssl
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import Enum

import aiohttp

from ferry import __version__
from ferry.queue.message import Message
from ferry.settings import Settings, scrub

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


def judge(status: int, retry_after: str | None, body: bytes) -> Outcome:
    """2xx delivered; 5xx, 408, 425, 429 (and anything odd) retried; other 4xx permanent."""
    if 200 <= status < 300:
        return Outcome(Verdict.DELIVERED, status=status)
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
    """Verify the main server against MAIN_SERVER_CA_FILE (or the system's CAs); mTLS if given."""
    context = ssl.create_default_context(
        cafile=str(settings.main_server_ca_file) if settings.main_server_ca_file else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.main_server_cert_file and settings.main_server_key_file:
        context.load_cert_chain(settings.main_server_cert_file, settings.main_server_key_file)
    return context


class Deliverer:
    """POSTs messages to MAIN_SERVER_URL over one pool of keep-alive connections."""

    def __init__(self, settings: Settings) -> None:
        assert settings.main_server_url is not None
        self.url = settings.main_server_url
        self.signing_key = settings.signing_key
        self._timeout = aiohttp.ClientTimeout(total=settings.delivery_timeout_seconds)
        self._tls = client_tls_context(settings) if self.url.startswith("https://") else None
        self._pool_size = settings.worker_concurrency
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Deliverer:
        connector = aiohttp.TCPConnector(
            limit=self._pool_size, ssl=self._tls if self._tls else True, keepalive_timeout=30
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            headers={"User-Agent": f"ferry/{__version__}"},
            auto_decompress=False,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def deliver(self, message: Message) -> Outcome:
        """One attempt; never raises for the main server's sake, it says what happened."""
        assert self._session is not None, "use Deliverer as an async context manager"
        headers = {
            "Content-Type": message.content_type,
            "X-Message-Id": message.id,
            "X-Attempt": str(message.attempt),
            "Idempotency-Key": message.id,
        }
        if self.signing_key is not None:
            headers |= signature_headers(self.signing_key, message.id, message.body)
        outcome = await self._attempt(message, headers)
        # The error becomes the message's last_error and log lines: whatever said it (aiohttp
        # names the URL in some errors, a main server may echo it), the URL's password and
        # query string (a token, often) are not in it.
        return replace(outcome, error=scrub(outcome.error, self.url)) if outcome.error else outcome

    async def _attempt(self, message: Message, headers: dict[str, str]) -> Outcome:
        assert self._session is not None
        try:
            async with self._session.post(
                self.url, data=message.body, headers=headers, allow_redirects=False
            ) as response:
                body = await response.content.read(ERROR_BODY_BYTES) if response.status >= 300 else b""
                return judge(response.status, response.headers.get("Retry-After"), body)
        except asyncio.TimeoutError:
            return Outcome(Verdict.RETRY, f"timed out after {self._timeout.total} s")
        except (aiohttp.ClientError, ssl.SSLError, OSError) as error:
            return Outcome(Verdict.RETRY, f"{type(error).__name__}: {error}")
