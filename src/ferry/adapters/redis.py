"""redis-py: its asyncio connections, with commands packed in C by hiredis.

redis-py's asyncio connections pack commands in Python, one argument at a time
(its synchronous ones use hiredis): a 64-message enqueue took 550 µs to pack,
against 74 µs here, which was 7% of the proxy's ingest route. The internals
used: `redis.connection.HiredisRespSerializer` and the `pack_command` method
that every asyncio connection calls.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.connection import HiredisRespSerializer


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
