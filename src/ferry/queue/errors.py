"""What can go wrong with Redis, in ferry's own few kinds.

The client that `ferry.queue.connection.connect` returns raises only these
(redis-py's exceptions are translated once, there, and kept as `__cause__`), so
every caller can tell "wait" from "stop and look" without knowing redis-py:

- `RedisUnavailable`: not reachable now (refused, reset, timed out, still
  loading its data, busy with a script, its master down, no master named by
  the sentinels yet, a cluster slot without a master). Wait and retry.
- `WritesRefused`: the server answers but will not store (out of memory under
  `noeviction`, cannot persist to disk, a replica, too few replicas). Nothing
  was written; wait and retry, and tell whoever waits why. A replica is this
  only where REDIS_URL names it: behind Sentinel, redis-py's connection turns
  READONLY into a lost connection, and the retry asks the sentinels again.
- `RedisBug`: a reply ferry did not expect: a key of the wrong type, a Lua
  error, an unparseable reply. Waiting will not help: a bug in ferry, or data
  that is not ferry's. Log it with its traceback.
"""

from __future__ import annotations

from redis.exceptions import (
    ClusterDownError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


class RedisFailure(Exception):
    """Redis did not do what ferry asked; the subclass says whether waiting helps."""


class RedisUnavailable(RedisFailure):
    """Not reachable now: wait and try again."""


class WritesRefused(RedisFailure):
    """The server answers but refuses to store (OOM, MISCONF, READONLY, NOREPLICAS)."""


class RedisBug(RedisFailure):
    """An answer ferry cannot use (WRONGTYPE, a Lua error, an unparseable reply)."""


# The first word of an error reply, for the codes redis-py has no class of its own for.
_UNAVAILABLE_CODES = frozenset({"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "UNBLOCKED"})
_REFUSING_CODES = frozenset({"OOM", "MISCONF", "READONLY", "NOREPLICAS"})
_PIPELINE_ANNOTATION = "of pipeline caused error: ("


def error_code(error: ResponseError) -> str:
    """The reply's error code (`OOM`, `MISCONF`, ...): redis-py keeps it apart for the
    codes it has a class for, and leaves it at the start of the message otherwise."""
    code = getattr(error, "status_code", None)
    if isinstance(code, str) and code:
        return code
    text = str(error.args[0]) if error.args else ""
    # A pipeline's error is reworded "Command # n (...) of pipeline caused error: ('<reply>',)".
    _, annotated, reply = text.rpartition(_PIPELINE_ANNOTATION)
    if annotated:
        text = reply.lstrip("'\"")
    return text.split(" ", 1)[0]


def translate(error: Exception) -> RedisFailure:
    """ferry's kind for an exception raised by redis-py (or under it), `error` as its cause.

    NOSCRIPT is translated too (to RedisUnavailable: a flushed script cache, which the
    next call reloads); the client lets it through untranslated where redis-py's own
    script loading needs to see it.
    """
    if isinstance(error, RedisFailure):
        return error
    kind: type[RedisFailure]
    if isinstance(error, (RedisConnectionError, RedisTimeoutError, OSError)) or _closed_transport(error):
        kind = RedisUnavailable  # includes LOADING (BusyLoadingError), timeouts, sockets
    elif isinstance(error, (OutOfMemoryError, ReadOnlyError)):
        kind = WritesRefused
    elif isinstance(error, (TryAgainError, ClusterDownError, NoScriptError, SlotNotCoveredError)):
        kind = RedisUnavailable  # MASTERDOWN is a ClusterDownError; a slot uncovered, mid-failover
    elif isinstance(error, ResponseError):
        code = error_code(error)
        if code in _REFUSING_CODES:
            kind = WritesRefused
        elif code in _UNAVAILABLE_CODES:
            kind = RedisUnavailable
        else:
            kind = RedisBug
    elif isinstance(error, RedisError):
        kind = RedisBug  # InvalidResponse, DataError, ...
    else:
        kind = RedisBug  # a reply a response callback could not parse
    translated = kind(_describe(error))
    translated.__cause__ = error
    return translated


def _closed_transport(error: Exception) -> bool:
    """uvloop's answer to a write on a connection that closed under redis-py while it
    reconnected (MagicStack/uvloop#506): Redis went away, nothing ferry did wrong."""
    return isinstance(error, RuntimeError) and "unable to perform operation on" in str(error)


def _describe(error: Exception) -> str:
    text = str(error)
    if isinstance(error, ResponseError):
        code = getattr(error, "status_code", None)
        if isinstance(code, str) and code and not text.startswith(code):
            text = f"{code} {text}"  # redis-py drops the code it made a class of
    return text or type(error).__name__


def refusal_reason(error: WritesRefused) -> str:
    """Redis's own reply to a refused write (`OOM command not allowed ...`), fit to tell a
    client: its error code and reason, without a pipeline's wording around it (which names
    the command and its arguments)."""
    text = str(error)
    _, annotated, reply = text.rpartition(_PIPELINE_ANNOTATION)
    if annotated:
        text = reply.strip("'\"(),")
    line = text.strip().splitlines()[0] if text.strip() else "writes refused"
    return line[:200]
