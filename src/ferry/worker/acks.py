"""Acks: deliveries the main server took, on their way to being recorded in Redis.

A delivery's slot frees at the main server's answer, not at its ack: the ack waits
here, still held by the worker (its id in the in-flight set, under the lease), and
rides with the fetcher's next claim, one round trip for both (`Worker._claim`).
Draining a backlog, a claim of C messages then carries the C acks before it: one
round trip per C messages instead of three or four, which is most of a worker's
cost per message besides the POST. An ack no claim is coming for (the queue is
drained, or the cluster's claims cannot carry it) goes at once in a call of its own,
with whatever else has ended by then; one a claim was coming for but did not take
within `LINGER_SECONDS`, likewise. A worker killed meanwhile loses nothing: the
message is delivered again (at least once), as if it had died during the POST.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ferry.queue.message import Message

# How long an ack may wait for a claim to carry it before it goes on its own. Longer
# than the fetcher's wait before a blocking claim (its LINGER_SECONDS and
# CARRY_ACKS_SECONDS), so that light-load acks ride with it; short enough that a
# message's status says `delivered` within a few milliseconds of its delivery.
LINGER_SECONDS = 0.01


class Acks:
    """The pending acks, and the loop (`run`) that records those no claim takes."""

    def __init__(
        self,
        record: Callable[[list[Message]], Awaitable[None]],
        recorded: Callable[[list[Message]], None],
    ) -> None:
        self._record = record  # waits out Redis; raises only for a bug
        self._recorded = recorded
        self._pending: list[Message] = []
        self._pending_since = 0.0  # event-loop time the oldest pending ack was added
        self._out = 0  # acks in a call of their own, not yet answered
        self._wanted = asyncio.Event()
        # A claim's acks did not run (NOSCRIPT: a new master, a flushed script cache),
        # or may not have: they go on their own, which loads the script or says why.
        self._alone = False
        self._settled = asyncio.Event()
        self._settled.set()
        # The fetcher will claim soon and carry what is pending: the loop holds off.
        self.claim_coming = False

    def __len__(self) -> int:
        """Pending acks: room a claim that carries them frees in its own round trip."""
        return len(self._pending)

    def add(self, message: Message) -> None:
        if not self._pending:
            self._pending_since = asyncio.get_running_loop().time()
        self._pending.append(message)
        self._settled.clear()
        self._wanted.set()

    def take(self) -> list[Message]:
        """All pending acks, for a claim to carry; `done` or `give_back` once it answered.
        None while acks a claim gave back wait to go on their own."""
        return [] if self._alone else self._take_all()

    def _take_all(self) -> list[Message]:
        taken, self._pending = self._pending, []
        self._out += len(taken)
        return taken

    def done(self, messages: list[Message]) -> None:
        self._out -= len(messages)
        self._recorded(messages)
        self._maybe_settled()

    def give_back(self, messages: list[Message]) -> None:
        """Acks a call did not record (or may not have): sent again, on their own. An ack
        is idempotent (ack.lua): one recorded twice is counted once."""
        self._out -= len(messages)
        if messages:
            self._alone = True
            if not self._pending:
                self._pending_since = asyncio.get_running_loop().time()
            self._pending[:0] = messages
            self._wanted.set()

    async def settled(self) -> None:
        """Wait until every ack added so far is recorded."""
        await self._settled.wait()

    async def run(self) -> None:
        """Record, in one call, what is pending whenever no claim is coming for it."""
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wanted.clear()
                await self._wanted.wait()
                continue
            waited = loop.time() - self._pending_since
            if self.claim_coming and not self._alone and waited < LINGER_SECONDS:
                await asyncio.sleep(LINGER_SECONDS - waited)  # not woken by each ack added meanwhile
                continue
            batch = self._take_all()
            try:
                await self._record(batch)
            except BaseException:
                self.give_back(batch)
                raise
            self._alone = False
            self.done(batch)

    def _maybe_settled(self) -> None:
        if not self._pending and not self._out:
            self._settled.set()
