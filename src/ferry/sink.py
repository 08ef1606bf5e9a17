"""The reference main server: stores each delivery once by X-Message-Id, with fault injection.

It is what workers deliver to in demos, tests and benchmarks, so it must be fast,
must tell duplicates apart (at-least-once means some are expected), must keep
what it acknowledged across a SIGKILL, and must fail on demand: answer errors,
answer slowly, or go away altogether (`POST /outage`).
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from ferry import platform
from ferry.logs import configure, get_logger

log = get_logger("ferry.sink")

MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_OUTAGE_SECONDS = 3600.0
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
# How long a stop waits for deliveries still in their handler (e.g. sleeping latency_ms).
SHUTDOWN_GRACE_SECONDS = 5.0
RELISTEN_BACKOFF_SECONDS = 0.5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    body BLOB NOT NULL,
    content_type TEXT,
    first_attempt TEXT,
    webhook_id TEXT,
    webhook_timestamp TEXT,
    webhook_signature TEXT,
    first_seen REAL NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1
)
"""

# One statement, so storing a new message and counting a duplicate are each atomic.
_RECORD = """
INSERT INTO messages (id, body, content_type, first_attempt,
                      webhook_id, webhook_timestamp, webhook_signature, first_seen)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET deliveries = deliveries + 1
RETURNING deliveries
"""


@dataclass(frozen=True)
class SinkConfig:
    host: str
    port: int
    db_path: Path
    certfile: Path | None = None
    keyfile: Path | None = None
    client_ca: Path | None = None  # set: require client certificates signed by this CA (mTLS)
    fail_rate: float = 0.0  # 0..1, share of deliveries answered with fail_status and not stored
    fail_status: int = 503
    latency_ms: float = 0.0  # delay before each delivery answer
    retry_after_seconds: float | None = None  # set: failures carry Retry-After
    log_level: str = "INFO"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One POST from a worker, as the sink keeps it."""

    id: str
    body: bytes
    content_type: str | None
    attempt: str | None
    signature_headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class StoredMessage:
    body: bytes
    content_type: str | None
    first_attempt: str | None
    signature_headers: dict[str, str]
    deliveries: int


class MessageStore:
    """Each message once, by id, in SQLite; repeats only raise its delivery count.

    WAL with synchronous=NORMAL: each commit is a write() to the WAL and no fsync,
    which survives a SIGKILL of the sink (not a power cut) and costs tens of µs,
    so running it on the event loop is cheaper than a thread hop.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit, every statement is its own transaction.
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        # Counted once at start, then kept in memory: /stats stays O(1) on a big table.
        self.unique, self.received = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(deliveries), 0) FROM messages"
        ).fetchone()

    def record(self, delivery: Delivery) -> int:
        """Store a new message or count a repeat; return its deliveries so far."""
        signature = [delivery.signature_headers.get(name) for name in SIGNATURE_HEADERS]
        # fetchall() runs the statement to completion, which is what commits it.
        ((deliveries,),) = self._db.execute(
            _RECORD,
            (delivery.id, delivery.body, delivery.content_type, delivery.attempt,
             *signature, time.time()),
        ).fetchall()
        self.received += 1
        self.unique += deliveries == 1
        return int(deliveries)

    def get(self, message_id: str) -> StoredMessage | None:
        row = self._db.execute(
            "SELECT body, content_type, first_attempt, webhook_id, webhook_timestamp,"
            " webhook_signature, deliveries FROM messages WHERE id = ?",
            (message_id,),
        ).fetchone()
        if row is None:
            return None
        body, content_type, first_attempt, *signature, deliveries = row
        return StoredMessage(
            body=body,
            content_type=content_type,
            first_attempt=first_attempt,
            signature_headers={
                name: value for name, value in zip(SIGNATURE_HEADERS, signature) if value is not None
            },
            deliveries=deliveries,
        )

    def close(self) -> None:
        self._db.close()


@dataclass(frozen=True, slots=True)
class Faults:
    """What the sink does wrong to deliveries; replaced whole, so a delivery sees one set."""

    fail_rate: float = 0.0
    status: int = 503
    latency_ms: float = 0.0
    retry_after_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "fail_rate": self.fail_rate,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "retry_after": self.retry_after_seconds,
        }

    def updated(self, changes: Mapping[str, Any]) -> Faults:
        """These faults with `changes` (the names of `to_json`); ValueError on a bad one."""
        unknown = set(changes) - set(self.to_json())
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        if "fail_rate" in changes:
            values["fail_rate"] = _number(changes["fail_rate"], "fail_rate", 0.0, 1.0)
        if "status" in changes:
            values["status"] = _status(changes["status"])
        if "latency_ms" in changes:
            values["latency_ms"] = _number(changes["latency_ms"], "latency_ms", 0.0, 3.6e6)
        if "retry_after" in changes:
            retry_after = changes["retry_after"]
            values["retry_after_seconds"] = (
                None if retry_after is None else _number(retry_after, "retry_after", 0.0, 3.2e7)
            )
        return replace(self, **values)


def _number(value: object, name: str, low: float, high: float) -> float:
    # bool is an int to Python, never a number to a user; NaN fails the comparison.
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{name} must be a number from {low:g} to {high:g}")
    return float(value)


def _status(value: object) -> int:
    # 1xx is not a final answer; 2xx is allowed: "said OK, kept nothing" is a loss to detect.
    if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 599:
        raise ValueError("status must be an integer from 200 to 599")
    return value


def _retry_after_header(seconds: float) -> str:
    # Whole seconds as HTTP says; fractions kept (ferry's worker reads them) for fast tests.
    return str(int(seconds)) if seconds.is_integer() else repr(seconds)


def _error(status: int, code: str, detail: str | None = None) -> web.Response:
    payload = {"error": code} if detail is None else {"error": code, "detail": detail}
    return web.json_response(payload, status=status)


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    """The request's JSON object, or None when the body is anything else."""
    try:
        payload = await request.json()
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _ssl_context(config: SinkConfig) -> ssl.SSLContext | None:
    """HTTPS when a certificate is given; with client_ca, a client without one fails the handshake."""
    if config.certfile is None or config.keyfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.certfile, config.keyfile)
    if config.client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=config.client_ca)
    return context


class Sink:
    """The HTTP side: deliveries on any POST path, control routes beside them."""

    def __init__(self, config: SinkConfig, store: MessageStore) -> None:
        self._config = config
        self._store = store
        self._ssl = _ssl_context(config)
        self._port = config.port
        # Through the same checks as POST /faults: a 1xx "failure" would break every client.
        self.faults = Faults().updated(
            {"fail_rate": config.fail_rate, "status": config.fail_status,
             "latency_ms": config.latency_ms, "retry_after": config.retry_after_seconds}
        )
        self.failed = 0  # injected failures since start; nothing is stored for them
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._outage: asyncio.Task[None] | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/stats", self.stats)
        app.router.add_get("/messages/{id}", self.message)
        app.router.add_get("/faults", self.get_faults)
        app.router.add_post("/faults", self.set_faults)
        app.router.add_post("/outage", self.outage)
        # Last, so the routes above win; any other POST is a delivery (MAIN_SERVER_URL's path is free).
        app.router.add_post("/{path:.*}", self.deliver)
        return app

    @property
    def url(self) -> str:
        scheme = "http" if self._ssl is None else "https"
        return f"{scheme}://{self._config.host}:{self._port}"

    async def start(self) -> None:
        self._runner = web.AppRunner(
            self.app(), access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS
        )
        await self._runner.setup()
        await self._listen()
        log.info("sink listening", url=self.url, db=str(self._config.db_path),
                 mtls=self._config.client_ca is not None, **self.faults.to_json())

    async def stop(self) -> None:
        if self._outage is not None:
            self._outage.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        self._store.close()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self._config.host, self._port, ssl_context=self._ssl)
        await self._site.start()
        # With --port 0, come back after an outage on the port clients already know.
        self._port = self._runner.addresses[0][1]

    async def _stop_listening(self, keep: web.BaseRequest) -> None:
        """Close the listening socket and drop every connection but `keep`'s, as a crash would.

        Keep-alive connections must go too, or pooled clients would not notice the
        outage; a request caught mid-delivery loses its answer, and its retry is a duplicate.
        """
        assert self._runner is not None and self._runner.server is not None
        if self._site is not None:
            await self._site.stop()
            self._site = None
        for connection in self._runner.server.connections:
            if connection is not keep.protocol:
                connection.force_close()

    async def _relisten_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        while True:
            try:
                await self._listen()
                break
            except OSError as error:  # someone took the port meanwhile: keep trying
                log.warning("sink cannot listen again", error=str(error))
                await asyncio.sleep(RELISTEN_BACKOFF_SECONDS)
        self._outage = None
        log.info("sink outage over", url=self.url)

    async def deliver(self, request: web.Request) -> web.Response:
        message_id = request.headers.get("X-Message-Id")
        if not message_id:
            return _error(400, "missing_message_id")
        body = await request.read()
        faults = self.faults
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        if faults.fail_rate and random.random() < faults.fail_rate:
            return self._injected_failure(message_id, faults)
        delivery = Delivery(
            id=message_id,
            body=body,
            content_type=request.headers.get("Content-Type"),
            attempt=request.headers.get("X-Attempt"),
            signature_headers={
                name: request.headers[name] for name in SIGNATURE_HEADERS if name in request.headers
            },
        )
        deliveries = self._store.record(delivery)
        log.debug("delivery", id=message_id, attempt=delivery.attempt, bytes=len(body),
                  deliveries=deliveries)
        return web.json_response({"id": message_id, "duplicate": deliveries > 1})

    def _injected_failure(self, message_id: str, faults: Faults) -> web.Response:
        self.failed += 1
        log.info("injected failure", id=message_id, status=faults.status)
        response = _error(faults.status, "injected_failure")
        if faults.retry_after_seconds is not None:
            response.headers["Retry-After"] = _retry_after_header(faults.retry_after_seconds)
        return response

    async def stats(self, request: web.Request) -> web.Response:
        received, unique = self._store.received, self._store.unique
        return web.json_response(
            {"received": received, "unique": unique, "duplicates": received - unique,
             "failed": self.failed}
        )

    async def message(self, request: web.Request) -> web.Response:
        stored = self._store.get(request.match_info["id"])
        if stored is None:
            return _error(404, "unknown_message")
        headers = {
            "Content-Type": stored.content_type or "application/octet-stream",
            "X-Sink-Deliveries": str(stored.deliveries),
            "X-Sink-Signature-Headers": json.dumps(stored.signature_headers),
        }
        if stored.first_attempt is not None:
            headers["X-Sink-First-Attempt"] = stored.first_attempt
        return web.Response(body=stored.body, headers=headers)

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.to_json())

    async def set_faults(self, request: web.Request) -> web.Response:
        changes = await _json_object(request)
        if changes is None:
            return _error(400, "invalid_json", "expected a JSON object")
        try:
            self.faults = self.faults.updated(changes)
        except ValueError as error:
            return _error(400, "invalid_faults", str(error))
        log.info("faults changed", **self.faults.to_json())
        return web.json_response(self.faults.to_json())

    async def outage(self, request: web.Request) -> web.Response:
        """Go down like a crashed server for `seconds`, then listen again on the same port."""
        payload = await _json_object(request)
        if payload is None:
            return _error(400, "invalid_json", "expected a JSON object")
        try:
            seconds = _number(payload.get("seconds"), "seconds", 0.0, MAX_OUTAGE_SECONDS)
        except ValueError as error:
            return _error(400, "invalid_outage", str(error))
        if self._outage is not None:
            return _error(409, "outage_in_progress")
        # Down before answering: a client that saw the 202 finds the sink gone at once.
        await self._stop_listening(keep=request)
        self._outage = asyncio.create_task(self._relisten_after(seconds))
        log.info("sink outage", seconds=seconds)
        response = web.json_response({"outage_seconds": seconds}, status=202)
        response.force_close()  # this connection ends with its answer
        return response


async def _serve(config: SinkConfig) -> None:
    sink = Sink(config, MessageStore(config.db_path))
    stopping = asyncio.Event()
    platform.on_stop(stopping.set)
    try:
        await sink.start()
        await stopping.wait()
        log.info("sink stopping")
    finally:
        await sink.stop()


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # not on Windows; asyncio's own loop is only slower
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(config: SinkConfig) -> None:
    """Serve until SIGTERM or SIGINT, then close connections and the database and return."""
    configure(config.log_level)
    with asyncio.Runner(loop_factory=_new_event_loop) as runner:
        runner.run(_serve(config))
