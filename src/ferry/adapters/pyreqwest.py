"""pyreqwest (Python bindings of Rust's reqwest, rustls): the worker's HTTP client where installed.

On the worker's delivery path it costs about half of aiohttp's CPU per delivery
(docs/benchmarks.md, 'HTTP clients'). It is a young library, so everything ferry
needs of it lives here and tests/adapters/test_pyreqwest.py is its canary:

- `build_streamed()` with `streamed_read_buffer_limit(0)`: the response comes
  back on its headers (a larger limit waits until that much of the body, or its
  end, has arrived), and an error's body is read no further than its first chunk
  (ERROR_BODY_BYTES of it kept); `build()` would read a whole body, however large;
- a cancelled request is not stopped: pyreqwest 0.15 drops the Tokio task's
  JoinHandle, which detaches it, so the request runs on until it ends or its
  timeout (FERRY_DELIVERY_TIMEOUT_SECONDS) fires, even past `Client.close()`. The
  worker gives the message back at once all the same; what is left ends with the
  process at the latest (a forced stop exits within seconds);
- its exception classes: `RequestTimeoutError` and the rest of `PyreqwestError`,
  whose `details["causes"]` end with the reason (an unknown issuer, a reset);
- `add_root_certificate_pem` takes one certificate (reqwest's `from_pem`), so a
  bundle is added certificate by certificate; and it *adds* to the system's
  store, which pyreqwest 0.15 cannot turn off (reqwest's `tls_certs_only` is not
  bound): `auto` picks aiohttp when MAIN_SERVER_CA_FILE is set, for that CA alone;
- under asyncio's own event loop a process that used it may abort at exit
  (PyGILState_Release while finalizing), under uvloop it did not: `auto` picks
  aiohttp where uvloop is missing (Windows).
"""

from __future__ import annotations

import re
from datetime import timedelta

from pyreqwest.client import ClientBuilder
from pyreqwest.exceptions import PyreqwestError, RequestTimeoutError

from ferry.settings import Settings
from ferry.worker.delivery import ERROR_BODY_BYTES, Answer, PostFailed, PostTimedOut, user_agent

# Idle keep-alive connections are closed after this long (aiohttp's keepalive_timeout too).
POOL_IDLE_SECONDS = 30
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def pem_certificates(bundle: bytes) -> list[bytes]:
    """Each certificate of a PEM bundle, on its own."""
    return _PEM_CERTIFICATE.findall(bundle)


def build_client(settings: Settings) -> ClientBuilder:
    builder = (
        ClientBuilder()
        .follow_redirects(False)
        .timeout(timedelta(seconds=settings.delivery_timeout_seconds))
        .max_connections(settings.worker_concurrency)
        .pool_idle_timeout(timedelta(seconds=POOL_IDLE_SECONDS))
        .user_agent(user_agent())
        .referer(False)
        .gzip(False)
        .brotli(False)
        .zstd(False)
        .deflate(False)
        .min_tls_version("TLSv1.2")
    )
    if settings.main_server_ca_file:
        certificates = pem_certificates(settings.main_server_ca_file.read_bytes())
        if not certificates:
            raise ValueError(f"MAIN_SERVER_CA_FILE holds no PEM certificate: {settings.main_server_ca_file}")
        for certificate in certificates:
            builder = builder.add_root_certificate_pem(certificate)
    if settings.main_server_cert_file and settings.main_server_key_file:
        identity = settings.main_server_cert_file.read_bytes() + b"\n" + settings.main_server_key_file.read_bytes()
        builder = builder.identity_pem(identity)
    return builder


def describe(error: PyreqwestError) -> str:
    """The class and the innermost reason: 'ConnectError: invalid peer certificate: UnknownIssuer'."""
    details = getattr(error, "details", None) or {}
    causes = details.get("causes") or []
    reason = causes[-1]["message"] if causes else error.message
    return f"{type(error).__name__}: {reason}"


class PyreqwestClient:
    """The `HttpClient` of ferry.worker.delivery on pyreqwest."""

    def __init__(self, settings: Settings) -> None:
        assert settings.main_server_url is not None
        self.url = settings.main_server_url
        self._client = build_client(settings).build()

    async def post(self, body: bytes, headers: dict[str, str]) -> Answer:
        try:
            request = (
                self._client.post(self.url)
                .headers(headers)
                .body_bytes(body)
                .streamed_read_buffer_limit(0)  # the answer on its headers, as aiohttp: no body waited for
                .build_streamed()
            )
            async with request as response:
                status = response.status
                if status < 300:  # what a 2xx says besides its status is not read
                    return Answer(status, None, b"")
                # What has arrived, as aiohttp's read(n): a stalled body is not waited for.
                excerpt = bytes(await response.body_reader.read_chunk() or b"")[:ERROR_BODY_BYTES]
                return Answer(status, response.get_header("Retry-After"), excerpt)
        except RequestTimeoutError as error:
            raise PostTimedOut() from error
        except PyreqwestError as error:
            raise PostFailed(describe(error)) from error

    async def close(self) -> None:
        await self._client.close()
