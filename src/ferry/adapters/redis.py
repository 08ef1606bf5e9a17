"""redis-py: its asyncio client raising only ferry's kinds of error, and its connections
packing commands in C by hiredis.

Errors are translated once, in the client (`FerryRedis`), so no caller knows
redis-py's exception classes. That needs a subclass of its `Pipeline` (built
with the constructor's positional arguments, as `Redis.pipeline` does) and of
`AsyncScript` (whose `__call__` catches `NoScriptError` to load the script).

redis-py's asyncio connections pack commands in Python, one argument at a time
(its synchronous ones use hiredis): a 64-message enqueue took 550 µs to pack,
against 74 µs here, which was 7% of the proxy's ingest route. The internals
used: `redis.connection.HiredisRespSerializer` and the `pack_command` method
that every asyncio connection calls.

Canaries: tests/adapters/test_redis.py, and tests/queue/test_redis_errors.py
(errors of commands, pipelines and scripts; scripts loaded again after SCRIPT FLUSH).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.commands.core import AsyncScript
from redis.connection import HiredisRespSerializer
from redis.exceptions import NoScriptError

from ferry.queue.errors import translate


class HiredisPacking:
    """Overrides `pack_command` of a redis-py asyncio connection."""

    _serializer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        packed: list[bytes] = self._serializer.pack(*args)
        return packed


class HiredisConnection(HiredisPacking, Connection):
    pass


class HiredisSSLConnection(HiredisPacking, SSLConnection):
    pass


class HiredisUnixConnection(HiredisPacking, UnixDomainSocketConnection):
    pass


_PACKED: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: HiredisConnection,
    SSLConnection: HiredisSSLConnection,
    UnixDomainSocketConnection: HiredisUnixConnection,
}


def hiredis_packed(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """The hiredis-packing twin of one of redis-py's three connection classes."""
    return _PACKED[connection_class]


class FerryRedis(Redis):
    """redis-py's client, raising only ferry's kinds of error (`ferry.queue.errors`).

    Translated once, here, after redis-py's own retries on a dropped connection;
    the original exception is the translation's `__cause__`. One exception passes
    through: NOSCRIPT from EVALSHA, which redis-py's script objects catch to load
    the script and run it again (`FerryScript` translates it if that fails too).
    """

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except NoScriptError as error:
            if args and str(args[0]).upper() == "EVALSHA":
                raise  # to AsyncScript.__call__, which loads the script and runs it again
            raise translate(error) from error
        except Exception as error:
            raise translate(error) from error

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> FerryPipeline:
        return FerryPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)

    def register_script(self, script: str | bytes) -> FerryScript:  # type: ignore[override]
        return FerryScript(self, script)


class FerryPipeline(Pipeline):
    """A pipeline whose errors, raised or (raise_on_error=False) returned, are ferry's kinds."""

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            replies = await super().execute(raise_on_error)
        except Exception as error:
            raise translate(error) from error
        return [translate(reply) if isinstance(reply, Exception) else reply for reply in replies]


class FerryScript(AsyncScript):
    """A Lua script whose NOSCRIPT, if loading it did not help, is translated too."""

    async def __call__(
        self,
        keys: Sequence[Any] | None = None,
        args: Iterable[Any] | None = None,
        client: Redis | None = None,
    ) -> Any:
        try:
            return await super().__call__(keys, args, client)
        except NoScriptError as error:  # flushed again between SCRIPT LOAD and EVALSHA
            raise translate(error) from error
