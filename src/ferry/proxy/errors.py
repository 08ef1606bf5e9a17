"""The proxy's error answers: JSON with a stable `error` code that clients may branch on."""

from __future__ import annotations

import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.responses import Response

from ferry.logs import get_logger
from ferry.queue.errors import RedisFailure, RedisUnavailable, WritesRefused, refusal_reason

log = get_logger(__name__)


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"  # 400: not valid HTTP/1.1 (the connection is closed), or two Authorization headers
    UNAUTHORIZED = "unauthorized"  # 401: no key, or not one of ours (nothing more is said)
    FORBIDDEN = "forbidden"  # 403: a valid API key, but the route needs an admin key
    ADMIN_DISABLED = "admin_disabled"  # 403: a valid API key, and no admin keys are configured
    NOT_FOUND = "not_found"  # 404
    METHOD_NOT_ALLOWED = "method_not_allowed"  # 405
    REQUEST_TIMEOUT = "request_timeout"  # 408: a head or body too slow (FERRY_*_TIMEOUT_SECONDS; closed)
    PAYLOAD_TOO_LARGE = "payload_too_large"  # 413: body over FERRY_MAX_BODY_BYTES
    HEADERS_TOO_LARGE = "headers_too_large"  # 431: a request head over 32 KiB (the connection is closed)
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"  # 415: a batch that is not JSON
    INVALID_REQUEST = "invalid_request"  # 422: unreadable batch, bad header
    RATE_LIMITED = "rate_limited"  # 429: over this key's rate
    INTERNAL_ERROR = "internal_error"  # 500: a bug in ferry (the proxy's log says which)
    QUEUE_FULL = "queue_full"  # 503: past FERRY_MAX_QUEUE_SIZE
    REDIS_UNAVAILABLE = "redis_unavailable"  # 503: not confirmed stored (if Redis died mid-call, it may be)
    REDIS_REFUSING_WRITES = "redis_refusing_writes"  # 503: Redis answers but stores nothing (OOM, MISCONF, READONLY)
    TOO_MANY_CONNECTIONS = "too_many_connections"  # 503: past FERRY_MAX_CONNECTIONS (closed)
    BODY_BUFFER_FULL = "body_buffer_full"  # 503: past FERRY_BODY_BUFFER_BYTES of bodies held (closed)


STATUS = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.ADMIN_DISABLED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.HEADERS_TOO_LARGE: 431,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.INVALID_REQUEST: 422,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.QUEUE_FULL: 503,
    ErrorCode.REDIS_UNAVAILABLE: 503,
    ErrorCode.REDIS_REFUSING_WRITES: 503,
    ErrorCode.TOO_MANY_CONNECTIONS: 503,
    ErrorCode.BODY_BUFFER_FULL: 503,
}

# What the proxy's HTTP layer (ferry.adapters.uvicorn) may answer any request, before a
# route sees it; and, for a body past its first 64 KiB, BODY_BUFFER_FULL.
CONNECTION_REFUSALS = (
    ErrorCode.BAD_REQUEST,
    ErrorCode.REQUEST_TIMEOUT,
    ErrorCode.HEADERS_TOO_LARGE,
    ErrorCode.TOO_MANY_CONNECTIONS,
)

# How long to tell a client to wait when ferry cannot take its request now.
REDIS_RETRY_AFTER_SECONDS = 1
FULL_RETRY_AFTER_SECONDS = 5
BUSY_RETRY_AFTER_SECONDS = 1  # too many connections, or of bodies held: others finish within seconds


class ErrorBody(BaseModel):
    """Every error answer of the proxy."""

    error: ErrorCode
    detail: str


def error_response(
    code: ErrorCode,
    detail: str,
    retry_after_seconds: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    headers = dict(headers or {})
    if retry_after_seconds is not None:
        headers["Retry-After"] = str(retry_after_seconds)
    if code is ErrorCode.UNAUTHORIZED:
        headers["WWW-Authenticate"] = "Bearer"
    return Response(
        orjson.dumps({"error": code.value, "detail": detail}),
        status_code=STATUS[code],
        media_type="application/json",
        headers=headers,
    )


def redis_unavailable(detail: str) -> Response:
    """503 with Retry-After: Redis did not answer (every route says so the same way)."""
    return error_response(ErrorCode.REDIS_UNAVAILABLE, detail, REDIS_RETRY_AFTER_SECONDS)


def redis_failed(error: RedisFailure, unavailable_detail: str = "") -> Response:
    """The answer when Redis did not do what a route asked, by what kind of failure it was.

    Unreachable: 503 redis_unavailable. Answering but refusing to store: 503
    redis_refusing_writes, with Redis's reason. Both with Retry-After. Anything
    else is a bug (in ferry, or data not ferry's): 500 internal_error, logged with
    its traceback.
    """
    # A client is told what happened in ferry's words and Redis's error code and reason,
    # never the host, port or password that redis-py's messages name: those go to the log.
    if isinstance(error, RedisUnavailable):
        _log_outage("redis unavailable, answering 503", error)
        return redis_unavailable(f"{unavailable_detail}Redis is unavailable")
    if isinstance(error, WritesRefused):
        _log_outage("redis refuses writes, answering 503", error)
        return error_response(
            ErrorCode.REDIS_REFUSING_WRITES,
            f"Redis refuses writes, nothing was stored: {refusal_reason(error)}",
            REDIS_RETRY_AFTER_SECONDS,
        )
    log.error("unexpected answer from redis", error=str(error), exc_info=error)
    return error_response(ErrorCode.INTERNAL_ERROR, "see the proxy's log")


# An outage makes a 503 of every request: its details are logged once per interval, not per answer.
OUTAGE_LOG_SECONDS = 5.0
_outage_logged: dict[str, float] = {}


def _log_outage(event: str, error: RedisFailure) -> None:
    now = time.monotonic()
    if now - _outage_logged.get(event, -OUTAGE_LOG_SECONDS) >= OUTAGE_LOG_SECONDS:
        _outage_logged[event] = now
        log.warning(event, error=str(error))


def described(*codes: ErrorCode) -> dict[int, str]:
    """Each status the codes answer with, and the codes that share it ("forbidden or admin_disabled")."""
    descriptions: dict[int, str] = {}
    for code in codes:
        status = STATUS[code]
        descriptions[status] = f"{descriptions[status]} or {code.value}" if status in descriptions else code.value
    return descriptions


def documented(*codes: ErrorCode) -> dict[int | str, dict[str, Any]]:
    """The error answers of a FastAPI route, for its `responses=`."""
    return {status: {"model": ErrorBody, "description": text} for status, text in described(*codes).items()}
