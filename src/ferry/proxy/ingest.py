"""The ingest routes, the proxy's hot path: read, check, store, answer.

Bare ASGI endpoints that the proxy dispatches to before FastAPI sees the
request: FastAPI's per-request machinery (middleware, telemetry checks, request
objects) cost over half of this route's throughput when profiled. Concurrent
requests share one Redis call through a `Coalescer`, and each still gets its
202 only once its own message is stored. 202 is never said for a message that
was not stored.
"""

from __future__ import annotations

import base64
import math
import re
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ferry.metrics import ProxyMetrics
from ferry.proxy.auth import ApiKeys
from ferry.proxy.errors import (
    FULL_RETRY_AFTER_SECONDS,
    ErrorCode,
    error_response,
    redis_failed,
)
from ferry.queue import Enqueued, Limits, Partitions
from ferry.queue.batching import Coalescer
from ferry.queue.errors import RedisFailure
from ferry.queue.message import NewMessage, new_message_id
from ferry.settings import Settings
from ferry.validation import one_line

DEFAULT_CONTENT_TYPE = "application/octet-stream"
# The one rule for the header values ferry keeps (Content-Type, Idempotency-Key), on
# both routes and in the OpenAPI document: 1 to 255 printable ASCII characters. A value
# every client can send, stored and delivered byte for byte (latin-1 "obs-text" would
# come back re-encoded).
HEADER_VALUE_PATTERN = r"^[\x20-\x7e]{1,255}$"
HEADER_VALUE_RULE = "1 to 255 printable ASCII characters"
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


class MessageAccepted(BaseModel):
    """`queued`: stored now (202). `existing`: the Idempotency-Key was seen; the first id (200)."""

    id: str
    status: Literal["queued", "existing"]
    message_status: Literal["queued", "delivering", "retrying", "delivered", "dead", "gone"] | None = Field(
        None,
        description=(
            "With `existing`: where the first message is now. `dead` or `gone` (purged, or its "
            "status expired) means it will not be delivered: send it with a new Idempotency-Key."
        ),
    )


def accepted(result: Enqueued) -> dict[str, str]:
    """One message's answer; a repeated key says where its first message is now."""
    if result.outcome == "existing":
        return {"id": result.id, "status": "existing", "message_status": result.status or "gone"}
    return {"id": result.id, "status": result.outcome}


class BatchItem(BaseModel):
    """One message of a batch: exactly one of `json`, `body` (text) or `body_base64`."""

    # One of three bodies, said so in the schema too; null is no string, so no None types.
    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": [name]} for name in ("json", "body", "body_base64")]}
    )

    json_: Any = Field(None, alias="json", description="A JSON value, sent as application/json.")
    body: str = Field(None, description="A text body, sent as UTF-8.")  # type: ignore[assignment]
    body_base64: str = Field(  # type: ignore[assignment]
        None, pattern=BASE64_PATTERN, description="Any bytes, base64-encoded."
    )
    content_type: str = Field(  # type: ignore[assignment]
        None, pattern=HEADER_VALUE_PATTERN, description=f"{HEADER_VALUE_RULE}; default: by the body's kind."
    )
    idempotency_key: str = Field(  # type: ignore[assignment]
        None, pattern=HEADER_VALUE_PATTERN, description=HEADER_VALUE_RULE
    )

    @model_validator(mode="after")
    def _one_body(self) -> BatchItem:
        given = [name for name in ("json", "body", "body_base64") if name in self._given()]
        if len(given) != 1:
            raise ValueError("give exactly one of json, body, body_base64")
        return self

    def _given(self) -> set[str]:
        return {"json" if name == "json_" else name for name in self.model_fields_set}

    def to_bytes(self) -> tuple[bytes, str]:
        """The stored body and its Content-Type."""
        if "json" in self._given():
            return exact_json(self.json_), self.content_type or "application/json"
        if self.body is not None:
            return self.body.encode(), self.content_type or "text/plain; charset=utf-8"
        try:
            raw = base64.b64decode(self.body_base64 or "", validate=True)
        except ValueError:
            raise ValueError("body_base64 is not valid base64") from None
        return raw, self.content_type or DEFAULT_CONTENT_TYPE


def exact_json(value: Any) -> bytes:
    """`value` as JSON, or ValueError for what the encoder would not keep exactly.

    The batch's parser takes any integer, and NaN, Infinity and numbers past a float's
    range (as infinities); orjson refuses integers outside -2**63..2**64-1 (a 500, were it
    not caught) and writes NaN and infinities as null. Such a message is refused, never
    stored changed.
    """
    try:
        dumped = orjson.dumps(value)
    except orjson.JSONEncodeError as error:
        raise ValueError(
            f"a json value cannot be kept exactly ({error}): integers must lie within -2**63..2**64-1"
        ) from None
    if b"null" in dumped and not _all_finite(value):  # the encoder wrote NaN or an infinity as null
        raise ValueError("a json value cannot be kept exactly: NaN, Infinity and numbers past 1.8e308 are not JSON")
    return dumped


def _all_finite(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return True


class BatchRequest(BaseModel):
    messages: list[BatchItem] = Field(min_length=1)


class BatchAccepted(BaseModel):
    """The batch's messages in the order given, each with its id."""

    messages: list[MessageAccepted]


class BodyTooLarge(Exception):
    pass


def header_map(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name (ASGI gives them lower-cased, as bytes)."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


async def read_body(headers: dict[str, str], receive: Receive, limit_bytes: int) -> bytes:
    """The body, refused as soon as it passes `limit_bytes`: a 2 GB upload is never read whole."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise BodyTooLarge
    chunks = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit_bytes:
            raise BodyTooLarge
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


valid_header_value = re.compile(HEADER_VALUE_PATTERN).fullmatch


class JsonAnswer:
    """A JSON answer as two bare ASGI messages, for the ingest routes' successes.

    Starlette's Response builds and checks its headers per instance, which cost
    more than the rest of the answer; these headers are always the same two.
    """

    __slots__ = ("status_code", "body")

    def __init__(self, payload: dict[str, Any], status_code: int) -> None:
        self.status_code = status_code
        self.body = orjson.dumps(payload)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(self.body))]
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


Answer = Response | JsonAnswer


class Ingest:
    """POST /api/v1/messages and /api/v1/messages/batch."""

    def __init__(
        self, settings: Settings, queue: Partitions, api_keys: ApiKeys, metrics: ProxyMetrics
    ) -> None:
        self.queue = queue
        self.api_keys = api_keys
        self.metrics = metrics
        self.max_body_bytes = settings.max_body_bytes
        self.max_batch = settings.max_batch
        self.strict = settings.durability == "strict"
        self.strict_replicas = settings.strict_replicas
        self.rate_limited = settings.rate_limit_per_second > 0
        self.limits = Limits(
            max_queue_size=settings.max_queue_size,
            rate_per_second=settings.rate_limit_per_second,
            rate_capacity=settings.rate_limit_capacity,
            idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
        )
        # Concurrent requests share one call; a partition's failure is its own messages' alone.
        self.enqueuer: Coalescer[NewMessage, Enqueued] = Coalescer(self._store_each)

    async def _store_each(self, messages: list[NewMessage]) -> list[Enqueued | RedisFailure]:
        return await self.queue.enqueue_each(messages, self.limits, fsync=self.strict, replicas=self.strict_replicas)

    async def _store(self, messages: list[NewMessage], all_or_nothing: bool = False) -> list[Enqueued]:
        return await self.queue.enqueue(
            messages, self.limits, all_or_nothing=all_or_nothing, fsync=self.strict, replicas=self.strict_replicas
        )

    async def message(self, headers: dict[str, str], receive: Receive) -> Answer:
        """POST /api/v1/messages."""
        key_id = self.api_keys.identify(headers.get("authorization"))
        if key_id is None:
            return error_response(ErrorCode.UNAUTHORIZED, "a valid API key is required")
        idempotency_key = headers.get("idempotency-key")
        if idempotency_key is not None and not valid_header_value(idempotency_key):
            return error_response(ErrorCode.INVALID_REQUEST, f"Idempotency-Key must be {HEADER_VALUE_RULE}")
        partition_key = headers.get("partition-key")
        if partition_key is not None and not valid_header_value(partition_key):
            return error_response(ErrorCode.INVALID_REQUEST, f"Partition-Key must be {HEADER_VALUE_RULE}")
        content_type = headers.get("content-type", DEFAULT_CONTENT_TYPE).strip()  # OWS is no part of a value
        if not valid_header_value(content_type):
            return error_response(ErrorCode.INVALID_REQUEST, f"Content-Type must be {HEADER_VALUE_RULE}")
        try:
            body = await read_body(headers, receive, self.max_body_bytes)
        except BodyTooLarge:
            return error_response(ErrorCode.PAYLOAD_TOO_LARGE, f"the body is over {self.max_body_bytes} bytes")
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        message = NewMessage(
            new_message_id(),
            body,
            content_type,
            idempotency_key or "",
            key_id if self.rate_limited else "",
            key_id,
            partition_key or "",
        )
        try:
            result = await self.enqueuer.submit(message)
        except RedisFailure as error:
            return not_stored(error)
        return self._answer_one(result)

    def _answer_one(self, result: Enqueued) -> Answer:
        if result.outcome == "queued":
            self.metrics.note_accepted(1)
            return JsonAnswer({"id": result.id, "status": "queued"}, 202)
        if result.outcome == "existing":
            return JsonAnswer(accepted(result), 200)
        return refusal(result)

    async def batch(self, headers: dict[str, str], receive: Receive) -> Answer:
        """POST /api/v1/messages/batch."""
        key_id = self.api_keys.identify(headers.get("authorization"))
        if key_id is None:
            return error_response(ErrorCode.UNAUTHORIZED, "a valid API key is required")
        if "idempotency-key" in headers:
            return error_response(
                ErrorCode.INVALID_REQUEST, "a batch takes idempotency_key on each message, not the header"
            )
        partition_key = headers.get("partition-key")
        if partition_key is not None and not valid_header_value(partition_key):
            return error_response(ErrorCode.INVALID_REQUEST, f"Partition-Key must be {HEADER_VALUE_RULE}")
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            return error_response(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "a batch is application/json")
        try:
            raw = await read_body(headers, receive, self.max_body_bytes)
        except BodyTooLarge:
            return error_response(ErrorCode.PAYLOAD_TOO_LARGE, f"the body is over {self.max_body_bytes} bytes")
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            messages = self._batch_messages(raw, key_id, partition_key or "")
        except (ValidationError, ValueError) as error:
            return error_response(ErrorCode.INVALID_REQUEST, one_line(error))
        try:
            results = await self._store(messages, all_or_nothing=True)
        except RedisFailure as error:
            return not_stored(error)
        refused = next((result for result in results if result.outcome in ("full", "limited")), None)
        if refused is not None:
            return refusal(refused)
        queued = sum(result.outcome == "queued" for result in results)
        self.metrics.note_accepted(queued)
        answer = [accepted(result) for result in results]
        return JsonAnswer({"messages": answer}, 202)

    def _batch_messages(self, raw: bytes, key_id: str, partition_key: str) -> list[NewMessage]:
        items = BatchRequest.model_validate_json(raw).messages
        if len(items) > self.max_batch:
            raise ValueError(f"a batch holds at most {self.max_batch} messages (FERRY_MAX_BATCH)")
        bucket = key_id if self.rate_limited else ""
        messages = []
        for item in items:
            body, content_type = item.to_bytes()
            if len(body) > self.max_body_bytes:
                raise ValueError(f"a message body is over {self.max_body_bytes} bytes")
            messages.append(
                NewMessage(
                    new_message_id(), body, content_type, item.idempotency_key or "", bucket, key_id, partition_key
                )
            )
        return messages


def refusal(result: Enqueued) -> Response:
    if result.outcome == "limited":
        wait_seconds = max(1, -(-result.wait_ms // 1000))
        return error_response(ErrorCode.RATE_LIMITED, "over this API key's rate", wait_seconds)
    return error_response(
        ErrorCode.QUEUE_FULL, "the queue is over its cap (FERRY_MAX_QUEUE_SIZE)", FULL_RETRY_AFTER_SECONDS
    )


def not_stored(error: RedisFailure) -> Response:
    return redis_failed(
        error, "Redis did not confirm the message; send it again (with an Idempotency-Key, safely): "
    )
