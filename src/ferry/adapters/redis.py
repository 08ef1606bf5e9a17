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

A lane (`FerryRedis.lane`) is a connection of the client's own for one caller's round
trips, past the pool: the worker's fetcher, whose wait-and-claim is one round trip per
message at a light load. redis-py 7.4 spends about as much CPU around a pipeline as
on its round trip (the pool's lock and observability hooks, a read to check a pooled
connection is clean, a task for each write's timeout): a lone 3-command pipeline cost
587 µs of CPU at 100 a second and 332 at 500, the same commands on a lane 344 and 264
(`python bench/light_load.py --floor`). The internals used: `ConnectionPool.make_connection`, and a
connection's `is_connected`, `connect`, `check_health`, `pack_commands`, `_writer`,
`read_response`, `disconnect` and `retry`.

Sentinel and Cluster are redis-py's own: `SentinelConnectionPool` asks the
sentinels for the master at every new connection, and its connections turn a
READONLY reply (a master demoted under them) into a dropped connection, which
the client's retries answer by asking again; `RedisCluster` follows MOVED and
ASK and maps the slots again after a failover. `FerryRedisCluster` translates
its errors as `FerryRedis` does, and sends commands that must share a connection
(a script and the WAITAOF behind it) down one connection of the master of a
slot, which redis-py's cluster pipeline does not (`pipeline_on_master_of`). The
internals that uses: `ClusterNode.execute_pipeline` with `PipelineCommand`s
(one connection, replies or errors per command), the client's `nodes_manager`
(`move_slot` on MOVED, `move_node_to_end_of_cached_nodes` on a lost connection),
its `_initialize` flag (map the slots again), `RedisClusterRequestTTL` and
`ERRORS_ALLOW_RETRY`; and, to mend the roles redis-py 7.4 leaves stale after a
failover, the `nodes_manager`'s `slots_cache`, `nodes_cache` and `default_node`.

Canaries: tests/adapters/test_redis.py, tests/queue/test_redis_errors.py
(errors of commands, pipelines and scripts; scripts loaded again after SCRIPT FLUSH),
and tests/scaling/ (a real Sentinel failover, a real Cluster: its redirections,
NOSCRIPT and failover under `pipeline_on_master_of` in test_cluster.py and
test_cluster_failover.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, PipelineCommand, RedisCluster
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection
from redis.cluster import PRIMARY, REPLICA
from redis.commands.core import AsyncScript
from redis.connection import HiredisRespSerializer
from redis.exceptions import (
    AskError,
    ClusterError,
    MovedError,
    NoScriptError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

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


class AskSentinelsOnReconnect:
    """A sentinel-managed connection that asks the sentinels again on every reconnect.

    redis-py 7.4 asks them only when the pool opens a connection: a connection
    that a command's retry opens again (after the master died, or answered
    READONLY) goes back to the old address (redis/redis-py#3874), so a failover
    was never followed by a client that was connected when it happened.
    `SentinelManagedConnection.connect` asks the sentinels, then connects with
    `retry_socket_connect=False`; every other caller reconnects through it.
    """

    async def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if retry_socket_connect:
            await cast(SentinelManagedConnection, self).connect()  # type: ignore[no-untyped-call]
        else:
            await super().connect_check_health(check_health, retry_socket_connect)  # type: ignore[misc]


class HiredisSentinelConnection(HiredisPacking, AskSentinelsOnReconnect, SentinelManagedConnection):
    pass


class HiredisSentinelSSLConnection(HiredisPacking, AskSentinelsOnReconnect, SentinelManagedSSLConnection):
    pass


_PACKED: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: HiredisConnection,
    SSLConnection: HiredisSSLConnection,
    UnixDomainSocketConnection: HiredisUnixConnection,
    SentinelManagedConnection: HiredisSentinelConnection,
    SentinelManagedSSLConnection: HiredisSentinelSSLConnection,
}


def hiredis_packed(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """The hiredis-packing twin of one of redis-py's three connection classes."""
    return _PACKED[connection_class]


async def _translated(command: Awaitable[Any], args: tuple[Any, ...]) -> Any:
    """A command's reply, its error as ferry's kind. NOSCRIPT from EVALSHA passes through,
    to AsyncScript.__call__, which loads the script and runs it again."""
    try:
        return await command
    except NoScriptError as error:
        if args and str(args[0]).upper() == "EVALSHA":
            raise
        raise translate(error) from error
    except Exception as error:
        raise translate(error) from error


async def _translated_replies(execution: Awaitable[list[Any]]) -> list[Any]:
    """A pipeline's replies, each error in them (raised or returned) as ferry's kind."""
    try:
        replies = await execution
    except Exception as error:
        raise translate(error) from error
    return [translate(reply) if isinstance(reply, Exception) else reply for reply in replies]


class FerryRedis(Redis):
    """redis-py's client, raising only ferry's kinds of error (`ferry.queue.errors`).

    Translated once, here, after redis-py's own retries on a dropped connection;
    the original exception is the translation's `__cause__`. One exception passes
    through: NOSCRIPT from EVALSHA, which redis-py's script objects catch to load
    the script and run it again (`FerryScript` translates it if that fails too).

    `companions` are clients closed with this one: the sentinels' connections.
    """

    companions: tuple[Redis, ...] = ()
    lanes: tuple[Lane, ...] = ()

    def lane(self) -> Lane:
        """A connection of this client's own for one caller's pipelines (closed with the client)."""
        lane = Lane(self.connection_pool)
        self.lanes = (*self.lanes, lane)
        return lane

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        return await _translated(super().execute_command(*args, **options), args)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> FerryPipeline:
        return FerryPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)

    def register_script(self, script: str | bytes) -> FerryScript:  # type: ignore[override]
        return FerryScript(self, script)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for lane in self.lanes:
            await lane.close()
        for companion in self.companions:
            await companion.aclose()


class Lane:
    """One connection, past the pool, for one caller at a time (see `busy`): a pipeline's
    round trip and nothing around it. Errors are ferry's kinds, as `FerryRedis`'s; a
    dropped connection is connected again and the commands sent again, as redis-py's
    retries do."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._connection: AbstractConnection | None = None
        self.busy = False

    async def execute(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Each command's reply in order, an error reply (as ferry's kind) in its place."""
        if self._connection is None:
            self._connection = self._pool.make_connection()
        connection = cast(AbstractConnection, self._connection)
        self.busy = True
        try:
            replies = await connection.retry.call_with_retry(
                lambda: self._round_trip(connection, commands), lambda _: connection.disconnect()
            )
        except Exception as error:
            raise translate(error) from error
        finally:
            self.busy = False
        return [translate(reply) if isinstance(reply, Exception) else reply for reply in replies]

    @staticmethod
    async def _round_trip(connection: AbstractConnection, commands: Sequence[Sequence[Any]]) -> list[Any]:
        if not connection.is_connected:
            await connection.connect()  # type: ignore[no-untyped-call]
        await connection.check_health()  # type: ignore[no-untyped-call]
        writer = cast(asyncio.StreamWriter, connection._writer)
        try:
            writer.writelines(connection.pack_commands(commands))
            await writer.drain()  # waits only on a full socket buffer, which a few commands never fill
        except (OSError, RuntimeError) as error:  # RuntimeError: uvloop's write on a closed transport
            await connection.disconnect(nowait=True)
            raise RedisConnectionError(f"Error while writing to Redis: {error}") from error
        replies: list[Any] = []
        for _ in commands:  # read_response disconnects on any other failure, cancellation included
            try:
                replies.append(await connection.read_response())
            except ResponseError as error:
                replies.append(error)
        return replies

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.disconnect()


class FerryPipeline(Pipeline):
    """A pipeline whose errors, raised or (raise_on_error=False) returned, are ferry's kinds."""

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        return await _translated_replies(super().execute(raise_on_error))


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


class FerryRedisCluster(RedisCluster):
    """redis-py's cluster client, raising only ferry's kinds of error, as `FerryRedis` does."""

    async def initialize(self) -> FerryRedisCluster:
        """Map the slots (again), and mark each known node with the role it has now.

        redis-py 7.4 keeps a node it knew before a failover with its old role (8.0's
        `NodesManager.set_nodes` copies the new one): a promoted replica stayed out of
        `get_primaries()`, so SCRIPT LOAD, sent to every primary, never reached it, and
        every script on it failed NOSCRIPT for good (measured: workers and proxies stalled
        for as long as the test ran, tests/scaling/test_cluster_failover.py).
        """
        mapping = self._initialize
        await super().initialize()
        if mapping:
            self._mark_roles()
        return self

    def _mark_roles(self) -> None:
        roles: dict[str, str] = {}
        shards = {id(nodes): nodes for nodes in self.nodes_manager.slots_cache.values()}
        for nodes in shards.values():  # a shard's list serves each of its slots
            roles[nodes[0].name] = PRIMARY
            for replica in nodes[1:]:
                roles.setdefault(replica.name, REPLICA)
        for name, node in self.nodes_manager.nodes_cache.items():
            node.server_type = roles.get(name, node.server_type)
        default = self.nodes_manager.default_node
        if default is not None and default.server_type != PRIMARY and self.get_primaries():
            self.nodes_manager.default_node = self.get_primaries()[0]

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        return await _translated(super().execute_command(*args, **options), args)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> FerryClusterPipeline:
        return FerryClusterPipeline(self, transaction)  # type: ignore[abstract]  # as RedisCluster.pipeline builds its own

    def register_script(self, script: str | bytes) -> FerryScript:  # type: ignore[override]
        return FerryScript(self, script)  # type: ignore[arg-type]  # it sends EVALSHA and SCRIPT LOAD only

    async def pipeline_on_master_of(
        self, key: str, *commands: Sequence[EncodableT], script: AsyncScript | None = None
    ) -> list[Any]:
        """The replies of `commands`, sent down one connection of the master that serves the slot
        of `key` (the first command's keys must share that slot); errors among them returned as
        ferry's kinds.

        For commands that must share a connection: WAITAOF waits for the writes of its own.
        redis-py's cluster pipeline sends a keyless command to a node of its choosing, and a
        redirected one down a connection of its own. Here the whole lot is sent again when the
        first command is redirected: to the node a MOVED names (the slot map patched, as the
        client does), or after ASKING to the one an ASK names; after NOSCRIPT, with `script`
        (the one the first command runs) loaded there. A lost connection, or a cluster down,
        maps the slots again and is tried as often more as the client's `retry` says, as
        `execute_command` does; then it is raised.
        """
        retries = self.retry.get_retries()
        while True:
            try:
                return await self._on_master_of(key, commands, script)
            except self.ERRORS_ALLOW_RETRY as error:
                lost = isinstance(error, (RedisConnectionError, RedisTimeoutError))
                if not lost:  # a cluster down, a slot uncovered: mapped again, as the client does
                    await self.aclose()
                if retries <= 0:
                    raise translate(error) from error
                retries -= 1
                await asyncio.sleep(0 if lost else 0.25)
            except Exception as error:
                raise translate(error) from error

    async def _on_master_of(
        self, key: str, commands: Sequence[Sequence[EncodableT]], script: AsyncScript | None
    ) -> list[Any]:
        await self.initialize()  # the slots mapped again, after a lost connection
        node = self.get_node_from_key(key)
        asking = False
        for _ in range(self.RedisClusterRequestTTL):
            if node is None:
                raise SlotNotCoveredError(  # type: ignore[no-untyped-call]
                    f"no node known for the slot of {key!r}"
                )
            sent = [("ASKING",), *commands] if asking else commands
            try:
                replies = await self._down_one_connection(node, sent)
                for reply in replies:
                    if isinstance(reply, self.ERRORS_ALLOW_RETRY):
                        raise reply
            except (RedisConnectionError, RedisTimeoutError):
                await self._after_losing(node)
                raise
            replies = replies[1:] if asking else replies
            first = replies[0]
            if isinstance(first, MovedError):
                self.nodes_manager.move_slot(first)
                node, asking = self.get_node_from_key(key), False
            elif isinstance(first, AskError):
                node, asking = self.get_node(host=first.host, port=first.port), True
                if node is None:  # a node the map does not know yet
                    self._initialize = True
            elif isinstance(first, NoScriptError) and script is not None:
                await node.execute_command("SCRIPT", "LOAD", script.script)
            elif isinstance(first, TryAgainError):  # keys of the slot half moved (a reshard)
                await asyncio.sleep(0.05)
            else:
                return [translate(each) if isinstance(each, Exception) else each for each in replies]
        raise ClusterError("TTL exhausted.")

    @staticmethod
    async def _down_one_connection(
        node: ClusterNode, commands: Sequence[Sequence[EncodableT]]
    ) -> list[Any]:
        """Each command's reply or error, all sent down one connection of `node`."""
        stack = [PipelineCommand(position, *command) for position, command in enumerate(commands)]
        await node.execute_pipeline(stack)
        return [command.result for command in stack]

    async def _after_losing(self, node: ClusterNode) -> None:
        """What `execute_command` does when a node's connection is lost (a failover under way):
        its connections opened again, the node asked last when the slots are mapped again."""
        node.update_active_connections_for_reconnect()
        await node.disconnect_free_connections()
        self.nodes_manager.move_node_to_end_of_cached_nodes(node.name)
        self._initialize = True

class FerryClusterPipeline(ClusterPipeline):
    """A cluster pipeline whose errors, raised or returned, are ferry's kinds."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        return await _translated_replies(super().execute(raise_on_error, allow_redirections))
