"""The proxy's application: ingest, status, health and metrics routes, and its OpenAPI document."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferry import __version__
from ferry.logs import get_logger
from ferry.metrics import ProxyMetrics
from ferry.observe.dashboard import dashboard_routes
from ferry.proxy.admin import add_admin_routes
from ferry.proxy.auth import ApiKeys
from ferry.proxy.errors import (
    CONNECTION_REFUSALS,
    ErrorBody,
    ErrorCode,
    described,
    documented,
    error_response,
    redis_failed,
    redis_unavailable,
)
from ferry.proxy.ingest import (
    HEADER_VALUE_PATTERN,
    Answer,
    BatchAccepted,
    BatchRequest,
    Ingest,
    MessageAccepted,
    header_map,
)
from ferry.proxy.schemas import MessageStatusOut, json_response, model_response
from ferry.queue import Partitions
from ferry.queue.connection import connect, probe_writes
from ferry.queue.errors import RedisBug, RedisFailure
from ferry.settings import Settings
from ferry.validation import one_line

log = get_logger(__name__)

MESSAGES = "/api/v1/messages"
BATCH = "/api/v1/messages/batch"
HEALTH_TIMEOUT_SECONDS = 1.0


FastEndpoint = Callable[[dict[str, str], Receive], Awaitable[Answer]]


class Dispatch:
    """Sends the ingest routes' POSTs straight to their endpoints; all else to FastAPI.

    The hot path is counted and timed here, without a middleware's send wrapper.
    """

    def __init__(
        self, fast: dict[tuple[str, str], FastEndpoint], fallback: ASGIApp, metrics: ProxyMetrics
    ) -> None:
        self.fast = fast
        self.fallback = fallback
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _authorization_repeated(scope["headers"]):
            # Which one counts would differ by route (the ingest reads the last, Starlette
            # the first): a request that sends two is refused whole.
            refused = error_response(ErrorCode.BAD_REQUEST, "send one Authorization header, not several")
            await refused(scope, receive, send)
            self.metrics.note(scope["method"], "unmatched", 400, 0.0)
            return
        endpoint = self.fast.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        if endpoint is None:
            await self.fallback(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            response: Answer | Response = await endpoint(header_map(scope), receive)
        except Exception as error:  # a bug: answered as FastAPI's routes answer one
            log.error("unexpected error", path=scope["path"], client=client_host(scope), exc_info=error)
            response = error_response(ErrorCode.INTERNAL_ERROR, "see the proxy's log")
        await response(scope, receive, send)
        self.metrics.note(scope["method"], scope["path"], response.status_code, time.perf_counter() - started)


def client_host(scope: Scope) -> str | None:
    """The client's address: X-Forwarded-For's when a trusted proxy sent it (FERRY_TRUSTED_PROXIES)."""
    client = scope.get("client")
    return str(client[0]) if client else None


def _authorization_repeated(headers: list[tuple[bytes, bytes]]) -> bool:
    return sum(name == b"authorization" for name, _ in headers) > 1


async def taken_by_dispatch(request: Request) -> Response:
    """Never called: Dispatch answers POSTs on the ingest paths before FastAPI sees them.

    The routes exist in FastAPI so that other methods there get a 405 with Allow.
    """
    raise AssertionError("Dispatch takes POSTs on the ingest paths")


def create_app(settings: Settings, redis_url: str) -> ASGIApp:
    redis = connect(redis_url, retries=1)
    queue = Partitions(redis, settings.partitions)
    api_keys = ApiKeys.from_settings(settings)
    admin_keys = ApiKeys.admin_from_settings(settings)
    metrics = ProxyMetrics()
    ingest = Ingest(settings, queue, api_keys, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        flusher = asyncio.create_task(metrics.flush_every_interval())
        yield
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        await redis.aclose()

    app = FastAPI(
        title="ferry proxy",
        version=__version__,
        description="Store-and-forward HTTPS message broker: 202 means stored in Redis.",
        lifespan=lifespan,
        docs_url="/docs" if settings.api_docs else None,  # its page loads scripts from a public CDN
        redoc_url=None,
        # A wrong path is a 404, never a redirect: Starlette's would send a client's POST to a
        # Location made from its own Host header.
        redirect_slashes=False,
        # Every route, the dead-letter routes too, may be refused by the HTTP layer.
        responses=documented(*CONNECTION_REFUSALS, ErrorCode.BODY_BUFFER_FULL),
    )
    app.router.routes[:0] = [
        Route(MESSAGES, taken_by_dispatch, methods=["POST"]),
        Route(BATCH, taken_by_dispatch, methods=["POST"]),
    ]

    def guarded(request: Request) -> Response | None:
        """401 for health and metrics when FERRY_HEALTH_METRICS_NEED_KEY says so."""
        if settings.health_metrics_need_key and api_keys.identify(request.headers.get("authorization")) is None:
            return error_response(ErrorCode.UNAUTHORIZED, "a valid API key is required")
        return None

    @app.get(
        MESSAGES + "/{message_id}",
        summary="A message's status",
        response_model=MessageStatusOut,
        response_description="where the message is",
        responses=documented(
            ErrorCode.UNAUTHORIZED,
            ErrorCode.NOT_FOUND,
            ErrorCode.REDIS_UNAVAILABLE,
            ErrorCode.REDIS_REFUSING_WRITES,
            *CONNECTION_REFUSALS,
        ),
        openapi_extra={"security": [{"ApiKey": []}]},
    )
    async def message_status(message_id: str, request: Request) -> Response:
        authorization = request.headers.get("authorization")
        admin = admin_keys is not None and admin_keys.identify(authorization) is not None
        caller = None if admin else api_keys.identify(authorization)
        if not admin and caller is None:
            return error_response(ErrorCode.UNAUTHORIZED, "a valid API key is required")
        found = await queue.status(message_id)  # a RedisFailure is answered by _redis_failure
        # Another key's message is no more found than a message that never was.
        if found is None or not (admin or found.sender == caller):
            return error_response(ErrorCode.NOT_FOUND, "no such message (or its status has expired)")
        return model_response(MessageStatusOut.of(found))

    @app.get(
        "/api/v1/health",
        summary="200 when Redis answers and takes writes, else 503 (for load balancers)",
        description=(
            "Reads the queue's length and writes one short-lived key: a Redis that answers "
            "but refuses writes (out of memory, cannot persist, a replica) is 503 "
            "redis_refusing_writes with its reason."
        ),
        responses=documented(
            ErrorCode.UNAUTHORIZED, ErrorCode.REDIS_UNAVAILABLE, ErrorCode.REDIS_REFUSING_WRITES, *CONNECTION_REFUSALS
        ),
    )
    async def health(request: Request) -> Response:
        if (refused := guarded(request)) is not None:
            return refused
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
                size = await queue.size()
                await asyncio.gather(*(probe_writes(group.redis, group.keys.health) for group in queue.groups))
        except TimeoutError:
            return redis_unavailable(f"redis does not answer within {HEALTH_TIMEOUT_SECONDS} s")
        except RedisFailure as error:
            return redis_failed(error)
        return json_response({"status": "ok", "redis": "up", "queue_size": size}, 200)

    @app.get(
        "/metrics",
        summary="Prometheus metrics, summed over every proxy process",
        responses={200: {"content": {"text/plain": {}}}, **documented(ErrorCode.UNAUTHORIZED, *CONNECTION_REFUSALS)},
    )
    async def prometheus(request: Request) -> Response:
        if (refused := guarded(request)) is not None:
            return refused
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
                snapshot = await queue.snapshot()
        except (RedisFailure, TimeoutError) as error:
            if isinstance(error, RedisBug):
                log.error("cannot read the queue's figures", error=str(error), exc_info=error)
            snapshot = None  # the request counters still tell the story
        return Response(metrics.render(snapshot), media_type="text/plain; version=0.0.4")

    add_admin_routes(app, settings, queue, api_keys, guarded)
    # The page asks for an admin key and reads /api/v1/stats with it; /metrics (its p95)
    # only when it needs no key, since the page holds an admin key, not an API key.
    app.router.routes.extend(dashboard_routes(None if settings.health_metrics_need_key else "/metrics"))
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(RedisFailure, _redis_failure)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)
    app.openapi = lambda: _openapi(app, settings)  # type: ignore[method-assign]
    fast: dict[tuple[str, str], FastEndpoint] = {("POST", MESSAGES): ingest.message, ("POST", BATCH): ingest.batch}
    return Dispatch(fast, RequestMetrics(app, metrics), metrics)


IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": HEADER_VALUE_PATTERN},
}
PARTITION_KEY = {
    "name": "Partition-Key",
    "in": "header",
    "required": False,
    "description": (
        "With FERRY_PARTITIONS > 1: messages with the same key go to the same partition, so they "
        "wait in one line (taken in the order stored; concurrent deliveries may still finish out "
        "of order)."
    ),
    "schema": {"type": "string", "pattern": HEADER_VALUE_PATTERN},
}


HTTP_ERRORS = {
    400: ErrorCode.BAD_REQUEST,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    422: ErrorCode.INVALID_REQUEST,
}


async def _http_error(request: Request, error: HTTPException) -> Response:
    """Starlette's and FastAPI's own refusals, in ferry's envelope."""
    code = HTTP_ERRORS.get(error.status_code)
    if code is None:  # none of ferry's routes raises another; the status is kept, the code is one of ours
        code = ErrorCode.BAD_REQUEST if error.status_code < 500 else ErrorCode.INTERNAL_ERROR
        body = orjson.dumps({"error": code.value, "detail": str(error.detail)})
        return Response(body, error.status_code, headers=error.headers, media_type="application/json")
    return error_response(code, str(error.detail), headers=error.headers)  # 405 keeps its Allow


async def _validation_error(request: Request, error: RequestValidationError) -> Response:
    return error_response(ErrorCode.INVALID_REQUEST, one_line(error))


async def _redis_failure(request: Request, error: RedisFailure) -> Response:
    """Every FastAPI route's Redis failure: 503 (unavailable, refusing writes) or 500 (a bug)."""
    return redis_failed(error)


async def _internal_error(request: Request, error: Exception) -> Response:
    log.error("unexpected error", path=request.url.path, client=client_host(request.scope), exc_info=error)
    return error_response(ErrorCode.INTERNAL_ERROR, "see the proxy's log")


class RequestMetrics:
    """Counts and times FastAPI's routes (pure ASGI; the template comes from the route)."""

    def __init__(self, app: ASGIApp, metrics: ProxyMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.note(scope["method"], template, status, time.perf_counter() - started)


def _openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """FastAPI documents its own routes; the two Starlette ingest routes are described here."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (MessageAccepted, BatchAccepted, BatchRequest, ErrorBody):
        definition = model.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
        components.update(definition.pop("$defs", {}))
        components[model.__name__] = definition
    components["BatchRequest"]["properties"]["messages"]["maxItems"] = settings.max_batch
    security: list[dict[str, list[str]]] = [{"ApiKey": []}]
    schema["components"]["securitySchemes"] = {"ApiKey": {"type": "http", "scheme": "bearer"}}

    def ref(name: str) -> dict[str, Any]:
        return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}

    def errors(*codes: ErrorCode) -> dict[str, Any]:
        return {str(status): {"description": text, **ref("ErrorBody")} for status, text in described(*codes).items()}

    refusals = (
        ErrorCode.BAD_REQUEST,
        ErrorCode.UNAUTHORIZED,
        ErrorCode.REQUEST_TIMEOUT,
        ErrorCode.PAYLOAD_TOO_LARGE,
        ErrorCode.HEADERS_TOO_LARGE,
        ErrorCode.INVALID_REQUEST,
        ErrorCode.RATE_LIMITED,
        ErrorCode.QUEUE_FULL,
        ErrorCode.REDIS_UNAVAILABLE,
        ErrorCode.REDIS_REFUSING_WRITES,
        ErrorCode.TOO_MANY_CONNECTIONS,
        ErrorCode.BODY_BUFFER_FULL,
    )
    schema["paths"][MESSAGES] = {
        "post": {
            "summary": "Hand over one message: 202 once it is stored in Redis",
            "description": (
                f"The body (up to {settings.max_body_bytes} bytes) and its Content-Type are kept "
                "byte for byte and delivered as they are. A repeated Idempotency-Key answers the "
                "first message's id with 200 and stores nothing."
            ),
            "security": security,
            "parameters": [IDEMPOTENCY_KEY, PARTITION_KEY],
            "requestBody": {
                "required": False,  # an empty message (a ping) is a message too
                # Any bytes of any type are a message: none of these bodies can be invalid.
                "content": {
                    "application/json": {"schema": {}},
                    "application/octet-stream": {"schema": {}},
                    "text/plain": {"schema": {}},
                },
            },
            "responses": {
                "202": {"description": "stored and queued", **ref("MessageAccepted")},
                "200": {"description": "an Idempotency-Key seen before", **ref("MessageAccepted")},
                **errors(*refusals),
            },
        }
    }
    schema["paths"][BATCH] = {
        "post": {
            "summary": f"Hand over up to {settings.max_batch} messages at once, all or nothing",
            "security": security,
            "parameters": [PARTITION_KEY],
            "requestBody": {"required": True, **ref("BatchRequest")},
            "responses": {
                "202": {"description": "all stored and queued, ids in order", **ref("BatchAccepted")},
                **errors(*refusals, ErrorCode.UNSUPPORTED_MEDIA_TYPE),
            },
        }
    }
    app.openapi_schema = schema
    return schema
