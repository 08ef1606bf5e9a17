"""What `ferry verify` asks over the network: metrics pages, proxy health, the main server's TLS.

Each probe answers within its timeout and never raises for what the far end does:
a refusal, a hang or a bad certificate is the finding.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509
from pydantic import BaseModel

from ferry.observe.checks_proxy import HealthProbe
from ferry.observe.promtext import Page, parse
from ferry.settings import redacted_url

SCRAPE_TIMEOUT_SECONDS = 1.0
MAIN_SERVER_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class ScrapeFailure:
    """Why a page could not be read: `refused` (nothing listens), `timeout` (it accepts,
    then hangs: a frozen process), or `error`."""

    kind: str
    detail: str


async def scrape(
    session: aiohttp.ClientSession, url: str, *, ssl_context: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
) -> Page | ScrapeFailure:
    try:
        async with session.get(url, ssl=ssl_context or True, headers=headers or {},
                               timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_SECONDS)) as response:
            if response.status != 200:
                return ScrapeFailure("error", f"HTTP {response.status}")
            return parse(await response.text())
    except TimeoutError:
        return ScrapeFailure("timeout", f"no answer within {SCRAPE_TIMEOUT_SECONDS:g} s")
    except aiohttp.ClientConnectorError as error:
        return ScrapeFailure("refused", _reason(error))
    except (aiohttp.ClientError, ValueError) as error:
        return ScrapeFailure("error", _reason(error))


async def health(
    session: aiohttp.ClientSession, base_url: str, ssl_context: ssl.SSLContext | None, headers: dict[str, str]
) -> HealthProbe:
    """GET /api/v1/health: 200, a 503 with ferry's error code, or no answer and why."""
    try:
        async with session.get(base_url + "/api/v1/health", ssl=ssl_context or True, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_SECONDS * 2)) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = {}
            body = body if isinstance(body, dict) else {}
            return HealthProbe(response.status, str(body.get("error", "")), str(body.get("detail", "")))
    except TimeoutError:
        return HealthProbe(None, detail=f"no answer within {SCRAPE_TIMEOUT_SECONDS * 2:g} s")
    except (aiohttp.ClientError, ValueError) as error:
        return HealthProbe(None, detail=_reason(error))


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return " ".join(text.split())


class Certificate(BaseModel):
    host_names: list[str]
    not_after: str  # ISO 8601, UTC
    days_left: float
    verified: bool
    verify_error: str


class MainServerProbe(BaseModel):
    url: str  # redacted
    reachable: bool
    status: int | None
    seconds: float | None
    error: str
    certificate: Certificate | None


async def probe_main_server(url: str, context: ssl.SSLContext | None) -> MainServerProbe:
    """Connect to MAIN_SERVER_URL as a worker would, read its certificate (expiry, names,
    whether it verifies) and the status of one HEAD: reachable, and how fast."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host, port = parts.hostname or "", parts.port or (443 if https else 80)
    shown = redacted_url(url)
    started = time.perf_counter()
    certificate: Certificate | None = None
    try:
        async with asyncio.timeout(MAIN_SERVER_TIMEOUT_SECONDS):
            if https:
                assert context is not None
                certificate = await _certificate(host, port, context)
            status = await _head(host, port, parts.path or "/", context if https else None,
                                 certificate is not None and not certificate.verified)
    except (OSError, TimeoutError, ssl.SSLError, ValueError) as error:
        detail = f"no answer within {MAIN_SERVER_TIMEOUT_SECONDS:g} s" if isinstance(error, TimeoutError) else _reason(error)
        return MainServerProbe(url=shown, reachable=False, status=None, seconds=None, error=detail,
                               certificate=certificate)
    return MainServerProbe(url=shown, reachable=True, status=status, seconds=round(time.perf_counter() - started, 4),
                           error="", certificate=certificate)


async def _certificate(host: str, port: int, context: ssl.SSLContext) -> Certificate:
    """The server's certificate over a real handshake: verified with `context`, or, when that
    fails, read anyway without verification so that its expiry and names can be shown."""
    verify_error = ""
    try:
        der = await _peer_certificate(host, port, context)
    except ssl.SSLCertVerificationError as error:
        verify_error = error.verify_message or _reason(error)
        unverified = ssl.create_default_context()
        unverified.check_hostname = False
        unverified.verify_mode = ssl.CERT_NONE
        der = await _peer_certificate(host, port, unverified)
    cert = x509.load_der_x509_certificate(der)
    try:
        names = [str(name) for name in cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    not_after = cert.not_valid_after_utc
    return Certificate(
        host_names=names,
        not_after=not_after.isoformat(),
        days_left=round((not_after - datetime.now(UTC)).total_seconds() / 86400, 2),
        verified=not verify_error,
        verify_error=verify_error,
    )


async def _peer_certificate(host: str, port: int, context: ssl.SSLContext) -> bytes:
    _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            raise ssl.SSLError("the server sent no certificate")
        return bytes(der)
    finally:
        writer.close()


async def _head(host: str, port: int, path: str, context: ssl.SSLContext | None, unverified: bool) -> int:
    """The status of one HEAD of `path` (any status means the server answers)."""
    if context is not None and unverified:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(
        host, port, ssl=context, server_hostname=host if context is not None else None
    )
    try:
        writer.write(f"HEAD {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        line = await reader.readline()
        fields = line.split()
        if len(fields) < 2 or not fields[1].isdigit():
            raise ValueError(f"not an HTTP answer: {line[:60]!r}")
        return int(fields[1])
    finally:
        writer.close()
