"""A client of the proxy's HTTP API, as a user's program speaks to it (`ferry send`).

It finds the proxy the way `ferry up` left it: `https://127.0.0.1:$PROXY_PORT`,
the development CA in FERRY_HOME/tls and the API key in FERRY_HOME/api-key,
unless told otherwise. Every failure is a `ClientError` with one line to show.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from ferry.processes.devcerts import dev_tls
from ferry.settings import Settings

REQUEST_TIMEOUT_SECONDS = 30.0
POLL_INTERVAL_SECONDS = 0.2
FINAL_STATUSES = frozenset({"delivered", "dead"})


class ClientError(Exception):
    """Nothing was done: the proxy was not reached, or refused the request. One line."""


class ProxyRefused(ClientError):
    """The proxy answered with an error; `code` is its stable error code (or `http_<status>`)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}" if detail else f"{status} {code}")
        self.status = status
        self.code = code


@dataclass(frozen=True)
class ProxyTarget:
    url: str
    api_key: str
    ca_file: Path | None  # None: the system's store (SSL_CERT_FILE), plus ferry up's CA when there


def default_url(settings: Settings) -> str:
    """The proxy on this machine: HTTPS when it has a certificate (ferry up always makes one)."""
    tls = settings.proxy_certfile is not None or dev_tls(settings.home).ca_file.is_file()
    return f"{'https' if tls else 'http'}://127.0.0.1:{settings.proxy_port}"


def default_api_key(settings: Settings) -> str:
    """The key `ferry up` uses; a client never makes one."""
    from ferry.processes.stack import api_key_file, known_api_key

    if (known := known_api_key(settings)) is not None:
        return known
    raise ClientError(
        f"no API key: give --api-key, set FERRY_API_KEYS, or run `ferry up` (it keeps one in {api_key_file(settings)})"
    )


def target(settings: Settings, url: str | None, api_key: str | None, ca_file: Path | None) -> ProxyTarget:
    return ProxyTarget(
        url=(url or default_url(settings)).rstrip("/"),
        api_key=api_key or default_api_key(settings),
        ca_file=ca_file,
    )


def ssl_context(ca_file: Path | None, home: Path) -> ssl.SSLContext:
    """The CA given alone; else the system's store and, when it is there, ferry up's CA
    (whose private key was never kept: it signs nothing more than that one certificate)."""
    if ca_file is not None:
        try:
            return ssl.create_default_context(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as error:
            raise ClientError(f"cannot read the CA file {ca_file}: {error}") from None
    context = ssl.create_default_context()
    dev_ca = dev_tls(home).ca_file
    if dev_ca.is_file():
        context.load_verify_locations(cafile=str(dev_ca))
    return context


def judge_content_type(body: bytes) -> str:
    """application/json when the body parses as JSON; text/plain when it is UTF-8; else bytes."""
    try:
        orjson.loads(body)
        return "application/json"
    except orjson.JSONDecodeError:
        pass
    try:
        body.decode()
        return "text/plain; charset=utf-8"
    except UnicodeDecodeError:
        return "application/octet-stream"


class ProxyClient:
    """One session with one proxy; use as `async with ProxyClient(...) as client`."""

    def __init__(self, proxy: ProxyTarget, context: ssl.SSLContext) -> None:
        self.proxy = proxy
        self.context = context
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ProxyClient:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.context),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
            headers={"Authorization": f"Bearer {self.proxy.api_key}"},
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, body: bytes, content_type: str, idempotency_key: str | None = None) -> dict[str, Any]:
        """The proxy's answer: `id` and `status` (`queued`, or `existing` for a repeated key)."""
        headers = {"Content-Type": content_type}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return await self._request("POST", "/api/v1/messages", body, headers)

    async def status(self, message_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/api/v1/messages/{message_id}")

    async def wait(self, message_id: str, timeout_seconds: float) -> dict[str, Any]:
        """The message's status once it is delivered or dead, or the last one seen at the timeout."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            found = await self.status(message_id)
            if found.get("status") in FINAL_STATUSES or time.monotonic() >= deadline:
                return found
            await asyncio.sleep(POLL_INTERVAL_SECONDS)

    async def _request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        assert self._session is not None, "use ProxyClient in `async with`"
        url = self.proxy.url + path
        try:
            async with self._session.request(method, url, data=body, headers=headers) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ClientError(f"cannot reach the proxy at {self.proxy.url}: {_reason(error)}") from None
        answer = _json_object(raw)
        if status >= 400:
            if answer is not None and isinstance(answer.get("error"), str):
                raise ProxyRefused(status, answer["error"], str(answer.get("detail", "")))
            raise ProxyRefused(status, f"http_{status}", _flat(raw.decode(errors="replace"))[:200])
        if answer is None:
            raise ClientError(f"{url} answered {status} with no JSON object: is it a ferry proxy?")
        return answer


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _reason(error: BaseException) -> str:
    """What went wrong, without aiohttp's repr of the connection key."""
    if isinstance(error, TimeoutError):
        return f"no answer within {REQUEST_TIMEOUT_SECONDS:.0f} s"
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        return f"its certificate is not trusted ({error.certificate_error}); give --ca-file"
    if isinstance(error, aiohttp.ClientConnectorError):
        errno = error.os_error.errno
        return os.strerror(errno) if errno else _flat(str(error.os_error))
    return _flat(str(error)) or type(error).__name__


def _flat(text: str) -> str:
    return " ".join(text.split())
