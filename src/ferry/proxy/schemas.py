"""The answers that more than one place gives, each defined once.

The OpenAPI document, the proxy's JSON and `ferry dead list --json` all come
from these models, so they cannot drift apart. Times are ISO 8601, UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, Field
from starlette.responses import Response

from ferry.queue.message import DeadLetter, MessageStatus, Status


def json_response(payload: dict[str, Any], status_code: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


def model_response(answer: BaseModel, status_code: int = 200) -> Response:
    return Response(answer.model_dump_json(), status_code=status_code, media_type="application/json")


def iso_time(ms: int | None) -> str | None:
    """A Unix time in ms as ISO 8601 in UTC; None for a time never set."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat() if ms else None


class MessageStatusOut(BaseModel):
    """Where a message is and how its delivery went (GET /api/v1/messages/{id})."""

    id: str
    status: Status
    attempts: int
    last_error: str | None
    created_at: str | None
    updated_at: str | None
    next_attempt_at: str | None
    delivered_at: str | None

    @classmethod
    def of(cls, found: MessageStatus) -> MessageStatusOut:
        return cls(
            id=found.id,
            status=found.status,
            attempts=found.attempts,
            last_error=found.last_error,
            created_at=iso_time(found.created_at_ms),
            updated_at=iso_time(found.updated_at_ms),
            next_attempt_at=iso_time(found.next_attempt_at_ms),
            delivered_at=iso_time(found.delivered_at_ms),
        )


class DeadLetterOut(BaseModel):
    """One dead letter: what an operator needs to decide on a replay."""

    id: str
    attempts: int
    returns: int = Field(description="Times taken back from workers that died delivering it.")
    last_error: str | None
    created_at: str | None
    died_at: str | None
    age_seconds: float = Field(description="How long it has been dead.")

    @classmethod
    def of(cls, letter: DeadLetter) -> DeadLetterOut:
        return cls(
            id=letter.id,
            attempts=letter.attempts,
            returns=letter.returns,
            last_error=letter.last_error,
            created_at=iso_time(letter.created_at_ms),
            died_at=iso_time(letter.died_at_ms),
            age_seconds=round(letter.age_seconds(), 3),
        )


class DeadLetterPage(BaseModel):
    """A page of the dead-letter list, the most recently dead first."""

    dead_letters: list[DeadLetterOut]
    total: int = Field(description="Dead letters in all.")
    limit: int
    offset: int

    @classmethod
    def of(cls, letters: list[DeadLetter], total: int, limit: int, offset: int) -> DeadLetterPage:
        return cls(dead_letters=[DeadLetterOut.of(letter) for letter in letters], total=total, limit=limit, offset=offset)
