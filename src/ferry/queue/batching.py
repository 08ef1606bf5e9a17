"""One Redis call for the many requests that arrive while the previous call is out.

The Redis client's CPU per call, not Redis, bounds ferry's hot paths (about
100 µs a call here). So concurrent callers hand their items to a `Coalescer`;
it sends whatever has gathered as one call, and while that call is out the next
batch gathers. Under light load a batch is one item and costs nothing extra;
under heavy load the cost per item falls with the batch size. Each caller still
gets its own answer only once its own item is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    """Runs `send(items) -> results` (in order) for batches of concurrent `submit`s.

    A result that is an exception is raised to its own caller alone; an exception
    `send` raises, to every caller of the batch.
    """

    def __init__(
        self, send: Callable[[list[Item]], Awaitable[Sequence[Result | Exception]]], max_batch: int = 500
    ) -> None:
        self._send = send
        self._max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_all())
        return await future

    async def _send_all(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._send_batch(batch)
        except BaseException as error:  # cancelled: nobody is left to send the rest
            _fail([future for _, future in self._pending], error)
            self._pending.clear()
            raise
        finally:
            self._sender = None

    async def _send_batch(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        futures = [future for _, future in batch]
        try:
            results = await self._send([item for item, _ in batch])
        except Exception as error:  # each caller sees its batch's error, and may retry
            _fail(futures, error)
            return
        except BaseException as error:
            _fail(futures, error)
            raise
        for future, result in zip(futures, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


def _fail(futures: list[asyncio.Future[Result]], error: BaseException) -> None:
    for future in futures:
        if future.done():
            continue
        if isinstance(error, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(error)
