"""When the next attempt is due: the guide's fixed interval, or exponential backoff."""

from __future__ import annotations

import random

from ferry.settings import Settings

# The shortest wait a main server's Retry-After can ask for (or the retry interval, if
# shorter): a server that answers "Retry-After: 0" to every attempt would otherwise get
# them as fast as the worker can send.
RETRY_AFTER_FLOOR_SECONDS = 1.0


def next_delay_seconds(attempt: int, retry_after_seconds: float | None, settings: Settings) -> float:
    """The wait after failed attempt number `attempt` (1-based).

    A main server's Retry-After wins: it knows when it will be back. Every wait is
    capped, so a bad header cannot park a message for a year, and has a floor, so
    `Retry-After: 0` cannot make a hot loop of attempts.
    """
    cap = settings.retry_max_interval_seconds
    if retry_after_seconds is not None:
        floor = min(settings.worker_retry_interval, RETRY_AFTER_FLOOR_SECONDS)
        return min(max(retry_after_seconds, floor), cap)
    base = settings.worker_retry_interval
    if settings.retry_backoff == "fixed":
        return min(base, cap)
    # Exponential with "equal jitter": at least half the step, so it still backs off,
    # and a random rest, so workers that failed together do not retry together.
    step = min(cap, base * 2.0 ** min(attempt - 1, 60))
    return step / 2 + random.uniform(0, step / 2)
