"""What `ferry verify` says: problems by name, the guide's checklist, the findings of a diagnosis.

Every check returns one of these models and the report is their JSON; the codes
are stable (scripts match on them), the messages are for people.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Mark = Literal["pass", "warn", "fail", "skip"]


class Problem(BaseModel):
    """Why a check failed, naming the culprit (`subject`: a worker id, a proxy URL, the queue)."""

    code: str
    subject: str
    message: str


class Finding(BaseModel):
    """A cause found while a check failed, in the guide's troubleshooting terms."""

    code: str
    message: str


class ChecklistItem(BaseModel):
    """One line of the guide's "Expected Results"."""

    item: str
    mark: Mark
    detail: str


# The guide's checklist, in its order and words.
MULTIPLE_WORKERS = "Multiple workers running"
EVEN_WORK = "Workers processing messages evenly"
QUEUE_STABLE = "Queue size stable or decreasing"
NO_OVERLOAD = "No single worker overloaded"
PROXY_FAST = "Proxy response times < 1 second"
CHECKLIST = (MULTIPLE_WORKERS, EVEN_WORK, QUEUE_STABLE, NO_OVERLOAD, PROXY_FAST)


def skipped(item: str, why: str) -> ChecklistItem:
    return ChecklistItem(item=item, mark="skip", detail=why)
