"""The worker: C concurrent deliveries from the queue to the main server.

Retry state lives in Redis, never here: a worker holds only what it is delivering
right now, under a lease it renews from a task of its own. Killed, it loses
nothing (the reaper of any other worker gives its messages back); stopped, it
finishes or gives back what it holds before it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import structlog
from prometheus_client import start_http_server

from ferry import platform
from ferry.logs import configure, get_logger
from ferry.metrics import WorkerMetrics
from ferry.observe.registry import Registration, metrics_url
from ferry.processes.redis_url import resolve_redis_url
from ferry.queue import Fenced
from ferry.queue.connection import UnsafeRedis, check_server, connect
from ferry.queue.errors import RedisFailure, RedisUnavailable, WritesRefused
from ferry.queue.message import Message, now_ms
from ferry.queue.partitions import Partitions
from ferry.settings import Settings
from ferry.worker.acks import Acks
from ferry.worker.delivery import Deliverer, Outcome, Verdict
from ferry.worker.retry_policy import next_delay_seconds

log = get_logger(__name__)
T = TypeVar("T")

# How long an idle worker waits on BLMOVE before it looks around (shutdown, retries).
BLOCK_SECONDS = 1.0
# Having claimed all there was, the fetcher waits up to this long for the deliveries
# under way to finish, so that their acks ride with its next (blocking) claim: one
# round trip and one wake-up less per message at a light load. Only while deliveries
# take less than this on average; a message arriving meanwhile waits that long at most.
CARRY_ACKS_SECONDS = 0.002
# At a steady rate of more than one message per LINGER_SECONDS, a claim that would wait
# on an empty queue is put off until LINGER_SECONDS after the last claim returned: what
# arrives meanwhile is claimed, POSTed and acked together, one round trip and one
# wake-up for several. Alone, each message costs several times its CPU when a backlog is
# drained; lingering, a message waits this long at most.
LINGER_SECONDS = 0.004
# Claimed ahead of the slots: what they finish in AHEAD_SECONDS at their pace, at least
# one slot's worth, at most AHEAD_MOST_SLOTS slots' worth. A claim costs the worker nearly
# as much for 16 messages as for 64 (its round trip, its write to Redis); claimed ahead so,
# one worker drains a backlog into a fast main server about a quarter faster at
# concurrency 16 (docs/architecture.md). A message so waits this long at most in one
# worker's hands, which keeps the workers' shares of a backlog even.
AHEAD_SECONDS = 0.005
AHEAD_MOST_SLOTS = 8
# The arrival rate is a moving average over this many claims.
RATE_CLAIMS = 8
# How often due retries are moved back to the queue while some are due or soon due.
PROMOTE_EVERY_SECONDS = 0.5
# With none due sooner, the maintenance loop sleeps up to this long, or until this worker
# schedules a retry due before it wakes: an idle worker wakes about once a second, not
# three times. A retry another worker left in the schedule when it stopped is moved at
# most this late.
IDLE_PROMOTE_SECONDS = 5.0
# How often a worker reads which partitions proxies have sent to (a partition a
# proxy with a larger FERRY_PARTITIONS added waits at most this long for workers).
ADOPT_EVERY_SECONDS = 5.0
# How long a stopping worker waits for Redis to record its last acks.
ACKS_AT_EXIT_SECONDS = 10.0
# Reconnect backoff while Redis is away: from the first value, doubling to the cap.
RECONNECT_FIRST_SECONDS = 0.1
RECONNECT_CAP_SECONDS = 5.0
# What the worker waits out, with that backoff: Redis away, or answering but refusing
# to store (OOM, MISCONF, READONLY). Any other failure is a bug, or data not ferry's.
WAIT_OUT = (RedisUnavailable, WritesRefused)
# A long-lived task (fetch, lease, maintenance) that fails otherwise is logged and
# restarted, backing off from the first value to the cap; failing this many times
# within the window, it stops the worker, which exits 1 for its supervisor to restart.
RESTART_FIRST_SECONDS = 0.1
RESTART_CAP_SECONDS = 5.0
MOST_TASK_FAILURES = 5
TASK_FAILURE_WINDOW_SECONDS = 60.0
# A delivery starts only while more than this share of the lease is left: a worker
# whose renewals fail stops well before others may take back what it holds.
LEASE_LEFT_TO_DELIVER = 1 / 3


class RedisAway:
    """Backs off while Redis is unreachable or refuses writes, and logs each outage once, not per try."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self.failures = 0
        self._refusing = False  # whether the outage logged last was a refusal to write

    async def wait(self, error: RedisFailure) -> None:
        refusing = isinstance(error, WritesRefused)
        if self.failures == 0 or refusing != self._refusing:
            if refusing:
                log.warning("redis refuses writes, retrying", error=str(error))
            else:
                log.warning("redis unavailable, retrying", error=str(error))
            self._refusing = refusing
        self.failures += 1
        self.metrics.redis_up.set(0)
        delay = min(RECONNECT_CAP_SECONDS, RECONNECT_FIRST_SECONDS * 2 ** min(self.failures, 10))
        await asyncio.sleep(random.uniform(delay / 2, delay))

    def ok(self) -> None:
        if self.failures:
            log.info("redis reachable again", failed_tries=self.failures)
            self.failures = 0
        self.metrics.redis_up.set(1)

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run `operation` until Redis answers it and takes its writes."""
        while True:
            try:
                result = await operation()
            except WAIT_OUT as error:
                await self.wait(error)
            else:
                self.ok()
                return result


class Worker:
    def __init__(
        self,
        settings: Settings,
        queue: Partitions,
        deliverer: Deliverer,
        metrics: WorkerMetrics,
        *,
        metrics_url: str = "",
    ) -> None:
        self.settings = settings
        self.worker_id = settings.worker_id
        # Its registry entry, written with every heartbeat (ferry workers list reads it).
        self.registration = Registration.of(settings.worker_id, settings.worker_concurrency, metrics_url)
        self.queue = queue
        queue.start_at(settings.worker_id)
        self.deliverer = deliverer
        self.metrics = metrics
        metrics.count_active(lambda: len(self.deliveries))
        # The logger as configured now: a call filtered out costs 0.15 µs, not the lazy
        # proxy's 1.6 µs (twice a delivery).
        self.log = log.bind()
        self.redis_away = RedisAway(metrics)
        # Deliveries the main server took, their acks on the way (see ferry.worker.acks).
        self.acks = Acks(self._record_acks, self._acks_recorded)
        self._carry_ready = asyncio.Event()  # the deliveries under way have all ended
        self._delivery_seconds = 0.0  # moving average
        self._retry_sooner = asyncio.Event()  # a retry is due before maintenance wakes
        self._wake_at_ms = math.inf  # when maintenance wakes next (ms); inf while it is awake
        self._claimed_at = 0.0  # event-loop time the last claim returned
        self._arrivals_per_second = 0.0  # moving average of messages claimed over the time between claims
        self.holder = new_holder()
        self._rejoining = asyncio.Lock()
        self.deliveries: set[asyncio.Task[None]] = set()
        self.waiting: deque[Message] = deque()  # claimed ahead, not yet being delivered
        self.held: set[str] = set()  # ids claimed and not yet settled (waiting, delivering, or acks on the way)
        self._next_stray_check = 0.0  # monotonic time; 0: at the next fetch
        # When the last heartbeat that held the lease was sent (monotonic): the lease
        # runs out no sooner than a lease after it.
        self._renewed_at: float | None = None
        self._lease_overdue = False  # deliveries held back until a renewal holds
        self.failed_task: str | None = None  # a task that kept failing: the worker exits 1
        # Loops end on these flags, not on cancellation alone: a Redis client that
        # swallows a CancelledError must not keep a stopping worker fetching.
        self._stopping = asyncio.Event()  # no more fetching
        self._closing = asyncio.Event()  # deliveries settled: lease and maintenance may end
        self._room = asyncio.Event()  # a delivery ended: the fetcher may claim more
        self._forced = asyncio.Event()  # a second stop: no more grace

    def stop(self) -> None:
        """First call: stop fetching, let in-flight deliveries finish within the grace
        period. A second call (Ctrl-C twice) cuts them short now."""
        if self._stopping.is_set():
            self._forced.set()
        self._stopping.set()

    async def run(self) -> None:
        if not await self._take_lease():
            return
        background = [
            asyncio.create_task(self._supervised("lease", self._keep_lease), name="lease"),
            asyncio.create_task(self._supervised("maintenance", self._maintain), name="maintenance"),
        ]
        acking = asyncio.create_task(self._supervised("acks", self.acks.run), name="acks")
        fetching = asyncio.create_task(self._supervised("fetch", self._fetch), name="fetch")
        await self._stopping.wait()
        log.info("stopping", in_flight=len(self.deliveries), grace_seconds=self.settings.shutdown_grace_seconds)
        fetching.cancel()
        await asyncio.gather(fetching, return_exceptions=True)
        await self._drain()
        await self._settle_acks()
        self._closing.set()
        for task in [acking, *background]:
            task.cancel()
        await asyncio.gather(acking, *background, return_exceptions=True)
        await self.queue.close()
        await self._give_back()

    async def _supervised(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run one of the worker's long-lived loops until it ends; restart it if it fails.

        The loops wait out Redis being away or refusing writes themselves; whatever
        else reaches here is unexpected: logged with its traceback, and the loop is
        started again after a backoff. A loop that keeps failing stops the worker
        (it finishes its deliveries and gives back what it holds), which exits 1.
        """
        failures: deque[float] = deque()
        while True:
            try:
                await loop()
                return
            except Exception as error:
                now = time.monotonic()
                failures.append(now)
                while failures[0] < now - TASK_FAILURE_WINDOW_SECONDS:
                    failures.popleft()
                if len(failures) >= MOST_TASK_FAILURES:
                    log.critical(
                        "worker task keeps failing, stopping the worker",
                        task=name,
                        failures=len(failures),
                        window_seconds=TASK_FAILURE_WINDOW_SECONDS,
                        error=str(error),
                        exc_info=error,
                    )
                    self.failed_task = name
                    if not self._stopping.is_set():
                        self.stop()
                    return
                delay = min(RESTART_CAP_SECONDS, RESTART_FIRST_SECONDS * 2 ** (len(failures) - 1))
                log.error(
                    "worker task failed unexpectedly, restarting",
                    task=name,
                    error=str(error),
                    restart_in_seconds=round(delay, 3),
                    exc_info=error,
                )
                await asyncio.sleep(delay)

    async def _take_lease(self) -> bool:
        """Wait until no live process holds this worker id, then take it.

        A previous process of the same id on this host that is gone (crashed, then
        restarted by its supervisor) need not wait out its lease: its in-flight
        messages are given back at once, counted as returns.
        """
        logged = False
        while not self._stopping.is_set():
            holder = await self.redis_away.call(lambda: self.queue.lease_holder(self.worker_id))
            if holder is None or _holder_is_dead(holder):
                break
            if not logged:
                log.warning("worker id in use, waiting for its lease", holder=holder)
                logged = True
            await asyncio.sleep(1.0)
        if self._stopping.is_set():
            return False
        await self.redis_away.call(lambda: self.queue.drop_lease(self.worker_id))
        reaped = await self.redis_away.call(lambda: self.queue.reap(self.settings.max_returns))
        self._log_reaped(reaped.returned, reaped.buried)
        await self._heartbeat(take=True)
        log.info("worker started", concurrency=self.settings.worker_concurrency, lease_holder=self.holder)
        return True

    async def _rejoin(self) -> None:
        """Fenced off: what this worker held was given back (or another process took its
        id), so it forgets what it claimed ahead and takes the lease anew, as a new holder.
        Deliveries under way finish; their acks are still recorded (see ack.lua)."""
        async with self._rejoining:
            if await self._heartbeat():
                return  # another task rejoined already
            log.warning("fenced off: the lease lapsed and what this worker held was given back")
            for message in self.waiting:
                self.held.discard(message.id)
            self.waiting.clear()
            self.holder = new_holder()
            await self._take_lease()

    async def _keep_lease(self) -> None:
        # A third of the lease: two renewals may fail before others take our messages.
        while not self._closing.is_set():
            await asyncio.sleep(self.settings.lease_seconds / 3)
            if not await self._heartbeat():
                await self._rejoin()

    async def _heartbeat(self, *, take: bool = False) -> bool:
        """Renew the lease (or take it), waiting out Redis; whether this holder holds it."""
        sent = time.monotonic()

        async def beat() -> bool:
            nonlocal sent
            sent = time.monotonic()
            entry = self.registration.entry(self.metrics.registry)
            return await self.queue.heartbeat(
                self.worker_id, self.holder, self.settings.lease_seconds, take=take, entry=entry
            )

        held = await self.redis_away.call(beat)
        if held:
            self._lease_renewed(sent)
        return held

    def _lease_renewed(self, sent: float) -> None:
        self._renewed_at = sent
        if self._lease_overdue:
            self._lease_overdue = False
            log.info("lease renewed, starting deliveries again")
            if not self._stopping.is_set():
                self._start_waiting()
            self._room.set()

    def _lease_allows_deliveries(self) -> bool:
        """Whether more than `LEASE_LEFT_TO_DELIVER` of the lease is left to start a delivery in."""
        lease = self.settings.lease_seconds
        left = -1.0 if self._renewed_at is None else self._renewed_at + lease - time.monotonic()
        if left > lease * LEASE_LEFT_TO_DELIVER:
            return True
        if not self._lease_overdue:
            self._lease_overdue = True
            log.warning(
                "lease renewal overdue, starting no deliveries until one succeeds",
                lease_left_seconds=round(max(0.0, left), 3),
            )
        return False

    async def _maintain(self) -> None:
        """Promote retries as they come due; reap dead workers every half lease, jittered;
        look for partitions that proxies added now and then."""
        next_reap = next_adopt = time.monotonic()
        pause = 0.0
        while not self._closing.is_set():
            await self._nap(pause)
            pause = random.uniform(0.5, 1.5) * PROMOTE_EVERY_SECONDS
            try:
                promoted = await self.queue.promote_due()
                if promoted:
                    log.debug("retries due, queued again", count=promoted)
                else:
                    pause = await self._until_next_retry(pause)
                if time.monotonic() >= next_reap:
                    reaped = await self.queue.reap(self.settings.max_returns)
                    self._log_reaped(reaped.returned, reaped.buried)
                    next_reap = time.monotonic() + self.settings.lease_seconds * random.uniform(0.4, 0.6)
                if time.monotonic() >= next_adopt:
                    await self._adopt_partitions()
                    next_adopt = time.monotonic() + ADOPT_EVERY_SECONDS
            except WAIT_OUT as error:
                await self.redis_away.wait(error)
            pause = max(0.0, min(pause, next_reap - time.monotonic(), next_adopt - time.monotonic()))

    async def _until_next_retry(self, shortest: float) -> float:
        """Seconds to sleep with nothing due now: until the next retry is due, at least
        `shortest`, at most IDLE_PROMOTE_SECONDS."""
        due_ms = await self.queue.next_retry_ms()
        if due_ms is None:
            return IDLE_PROMOTE_SECONDS
        return min(IDLE_PROMOTE_SECONDS, max(shortest, (due_ms - now_ms()) / 1000))

    async def _nap(self, seconds: float) -> None:
        """Sleep that long, or until this worker schedules a retry due before then (or
        scheduled one while maintenance was awake, after it looked at the schedule)."""
        self._wake_at_ms = now_ms() + seconds * 1000
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._retry_sooner.wait(), seconds)
        self._retry_sooner.clear()
        self._wake_at_ms = math.inf  # awake: any retry scheduled now is looked at before the next nap

    async def _adopt_partitions(self) -> None:
        """Drain the partitions proxies record beyond this worker's own: its lease there is
        taken at once, so claims start there before the next renewal."""
        if added := await self.queue.adopt_recorded():
            log.info("draining partitions that proxies added", added=added, partitions=len(self.queue.groups))
            if not await self._heartbeat():
                await self._rejoin()

    def _log_reaped(self, returned: int, buried: int) -> None:
        if returned or buried:
            self.metrics.returned.inc(returned)
            log.warning("took back messages of dead workers", returned=returned, poison_pills=buried)

    async def _fetch(self) -> None:
        """Keep every delivery slot busy, with more claimed ahead (`_claim_ahead`).

        The claimed-ahead messages wait in `self.waiting` (and in Redis, in this
        worker's in-flight set, under its lease): a finished delivery starts the
        next one at once instead of waiting a claim's round trip. A claim that took
        all there was is followed by one that waits for more: the wait and the claim
        go in one round trip, so a message arriving at an idle worker costs one claim.
        """
        concurrency = self.settings.worker_concurrency
        self._next_stray_check = 0.0  # restarted after a failed claim: its reply may be lost
        drained = True  # the last claim took all there was: the next waits for more, in its round trip
        while not self._stopping.is_set():
            ahead = self._claim_ahead()
            room = self._room_to_claim(concurrency + ahead)
            # Claim in batches (a claim costs one round trip whatever its size), from half
            # what is claimed ahead, so that a claim is back before what was claimed ahead
            # runs out; never let a free slot wait for one; nothing while the lease may lapse.
            if (
                room <= 0
                or (room < max(1, ahead // 2) and len(self.deliveries) == concurrency)
                or not self._lease_allows_deliveries()
            ):
                # The pending acks wait for this claim (within acks.LINGER_SECONDS).
                self.acks.claim_coming = self.queue.pipelines_scripts and not self._lease_overdue
                self._room.clear()
                await self._room.wait()  # a delivery ended, an ack was recorded, or the lease was renewed
                continue
            try:
                await self._return_strays()
                if drained:
                    await self._wait_for_acks()
                    room = self._room_to_claim(concurrency + ahead)  # the acks of deliveries that ended meanwhile free some
                messages = await self._claim(room, block_seconds=BLOCK_SECONDS if drained else 0)
            except Fenced:
                await self._rejoin()
                continue
            except WAIT_OUT as error:
                self._next_stray_check = 0.0  # its reply may be lost, not the claim
                await self.redis_away.wait(error)
                continue
            self.redis_away.ok()
            self._note_arrivals(len(messages))
            drained = len(messages) < room
            self.held.update(message.id for message in messages)
            if self._stopping.is_set():
                return  # claimed as the stop came: still in-flight, given back at exit
            self.waiting.extend(messages)
            self._start_waiting()

    def _claim_ahead(self) -> int:
        """How many to hold beyond the slots: what they finish in AHEAD_SECONDS (see there)."""
        concurrency = self.settings.worker_concurrency
        if self._delivery_seconds <= 0:  # no delivery yet
            return concurrency
        pace = concurrency / self._delivery_seconds  # deliveries a second, every slot busy
        return min(max(concurrency, int(pace * AHEAD_SECONDS)), AHEAD_MOST_SLOTS * concurrency)

    def _room_to_claim(self, most_held: int) -> int:
        """How many more may be claimed: what is held, less the acks the claim carries."""
        carried = len(self.acks) if self.queue.pipelines_scripts else 0
        return most_held - len(self.held) + carried

    def _note_arrivals(self, claimed: int) -> None:
        now = asyncio.get_running_loop().time()
        since, self._claimed_at = now - self._claimed_at, now
        if since > 0:
            self._arrivals_per_second += (claimed / since - self._arrivals_per_second) / RATE_CLAIMS

    async def _wait_for_acks(self) -> None:
        """Before a claim that waits on an empty queue: linger, at a steady rate (see
        `LINGER_SECONDS`); then, if the deliveries under way are fast, wait (briefly) until
        they have ended. The acks of deliveries that end meanwhile ride with the claim."""
        linger = 0.0
        if self._arrivals_per_second * LINGER_SECONDS >= 1:
            linger = self._claimed_at + LINGER_SECONDS - asyncio.get_running_loop().time()
        if not self.queue.pipelines_scripts:  # a cluster, or partitions: acks are calls of their own anyway
            if linger > 0:
                await asyncio.sleep(linger)
            return
        if linger <= 0 and not self._carry_fast():
            return
        self.acks.claim_coming = True
        if linger > 0:
            await asyncio.sleep(linger)
        if self._carry_fast():
            self._carry_ready.clear()
            handle = asyncio.get_running_loop().call_later(CARRY_ACKS_SECONDS, self._carry_ready.set)
            try:
                await self._carry_ready.wait()
            finally:
                handle.cancel()

    def _carry_fast(self) -> bool:
        """Whether deliveries are under way and fast enough for the claim to wait for their acks."""
        return bool(self.deliveries) and self._delivery_seconds < CARRY_ACKS_SECONDS

    async def _claim(self, room: int, *, block_seconds: float) -> list[Message]:
        """Claim, carrying the pending acks where the queue can (one round trip for both);
        the acks of deliveries that end during its round trip go on their own."""
        self.acks.claim_coming = False
        carried = self.acks.take() if self.queue.pipelines_scripts else []
        if not carried:
            return await self.queue.claim(self.worker_id, room, holder=self.holder, block_seconds=block_seconds)
        try:
            acks_ran, messages = await self.queue.ack_and_claim(
                self.worker_id,
                [message.id for message in carried],
                self.settings.status_ttl_seconds,
                room,
                holder=self.holder,
                block_seconds=block_seconds,
            )
        except BaseException:  # the acks may not have run: sent again on their own
            self.acks.give_back(carried)
            raise
        if acks_ran:
            self.acks.done(carried)
        else:
            self.acks.give_back(carried)
        return messages

    async def _record_acks(self, messages: list[Message]) -> None:
        await self.redis_away.call(
            lambda: self.queue.ack(self.worker_id, messages, self.settings.status_ttl_seconds, holder=self.holder)
        )

    def _acks_recorded(self, messages: list[Message]) -> None:
        for message in messages:
            self.held.discard(message.id)
        self._room.set()

    async def _settle_acks(self) -> None:
        """A stopping worker records the acks still on the way before it gives back what it
        holds (else those messages would be delivered again). If Redis stays away, it gives
        up after a while: they are given back with the rest, or returned by the lease."""
        self.acks.claim_coming = False
        try:
            await asyncio.wait_for(self.acks.settled(), timeout=ACKS_AT_EXIT_SECONDS)
        except TimeoutError:
            log.warning("redis unavailable at shutdown: delivered messages not yet recorded will be delivered again")

    async def _return_strays(self) -> None:
        """Give back what this worker's in-flight set holds that the worker does not know of.

        A claim whose reply was lost (Redis died after running it, or the client
        retried it on a dropped connection) leaves its ids there, and under this
        worker's live lease nobody else would return them. Checked after a failed
        claim and once a lease period; only here, between claims, so no claim's ids
        can be taken for strays.
        """
        if time.monotonic() < self._next_stray_check:
            return
        returned = await self.queue.return_strays(self.worker_id, self.held, holder=self.holder)
        self._next_stray_check = time.monotonic() + self.settings.lease_seconds
        if returned:
            log.warning("gave back messages claimed with a lost reply", count=returned)

    def _start_waiting(self) -> None:
        while (
            self.waiting
            and len(self.deliveries) < self.settings.worker_concurrency
            and self._lease_allows_deliveries()
        ):
            task = asyncio.create_task(self._deliver(self.waiting.popleft()))
            self.deliveries.add(task)
            task.add_done_callback(self._delivery_done)

    async def _deliver(self, message: Message) -> None:
        """A delivery slot's task: its message, then each one waiting, until none waits.
        Draining a backlog, a slot's task so lives for many messages, not one a message."""
        while True:
            await self._process(message)
            self._room.set()
            if not self.waiting or self._stopping.is_set() or not self._lease_allows_deliveries():
                return
            message = self.waiting.popleft()

    def _delivery_done(self, task: asyncio.Task[None]) -> None:
        self.deliveries.discard(task)
        if not self.deliveries:
            self._carry_ready.set()
        if not self._stopping.is_set():
            self._start_waiting()
        self._room.set()
        if not task.cancelled() and task.exception() is not None:
            # Its id is no longer held: the next fetch gives it back to the queue.
            self._next_stray_check = 0.0
            log.error("delivery task failed", exc_info=task.exception())

    async def _process(self, message: Message) -> None:
        self.log.debug("delivering", message_id=message.id, attempt=message.attempt)
        acked_later = False  # delivered: held until its ack is recorded
        try:
            started = time.perf_counter()
            outcome = await self.deliverer.deliver(message)
            took = time.perf_counter() - started
            self.metrics.delivery_seconds.observe(took)
            self._delivery_seconds += (took - self._delivery_seconds) / 16
            if outcome.verdict is Verdict.DELIVERED:
                self._delivered(message, outcome)
                acked_later = True
            else:
                with structlog.contextvars.bound_contextvars(message_id=message.id, attempt=message.attempt):
                    await self._settle_failure(message, outcome)
        finally:
            if not acked_later:
                self.held.discard(message.id)

    def _delivered(self, message: Message, outcome: Outcome) -> None:
        """The main server took it: its slot frees now, its ack follows (ferry.worker.acks)."""
        self.acks.add(message)
        self.metrics.processed.inc()
        if message.created_at_ms:
            self.metrics.end_to_end_seconds.observe(max(0, now_ms() - message.created_at_ms) / 1000)
        self.log.debug("delivered", message_id=message.id, attempt=message.attempt, status=outcome.status)

    async def _settle_failure(self, message: Message, outcome: Outcome) -> None:
        settings = self.settings
        self.metrics.failed.inc()
        if outcome.verdict is Verdict.PERMANENT or message.attempt >= settings.worker_max_attempts:
            await self.redis_away.call(
                lambda: self.queue.bury(self.worker_id, message, outcome.error, holder=self.holder)
            )
            self.metrics.dead.inc()
            log.warning("dead-lettered", error=outcome.error, permanent=outcome.verdict is Verdict.PERMANENT)
            return
        delay = next_delay_seconds(message.attempt, outcome.retry_after_seconds, settings)
        due_ms = now_ms() + int(delay * 1000)
        await self.redis_away.call(
            lambda: self.queue.retry_later(self.worker_id, message, due_ms, outcome.error, holder=self.holder)
        )
        if due_ms < self._wake_at_ms:
            self._retry_sooner.set()  # maintenance sleeps past it: it promotes this one on time
        self.metrics.retries.inc()
        log.warning("delivery failed, will retry", error=outcome.error, retry_in_seconds=round(delay, 3))

    async def _drain(self) -> None:
        """Let in-flight deliveries finish within the grace period, then cut them short."""
        if self.deliveries and self.settings.shutdown_grace_seconds > 0:
            finished = asyncio.create_task(asyncio.wait(set(self.deliveries)))
            forced = asyncio.create_task(self._forced.wait())
            await asyncio.wait(
                {finished, forced}, timeout=self.settings.shutdown_grace_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            for helper in (finished, forced):
                helper.cancel()
        if self.deliveries:
            log.warning("grace period over, giving back unfinished deliveries", count=len(self.deliveries))
            for task in self.deliveries:
                task.cancel()
            await asyncio.gather(*self.deliveries, return_exceptions=True)

    async def _give_back(self) -> None:
        """Return what this worker still holds to the queue's front and leave the registry.

        If Redis stays away, give up after a while: the lease then runs out and
        another worker's reaper returns the messages instead.
        """
        try:
            released = await asyncio.wait_for(
                self.redis_away.call(lambda: self.queue.release(self.worker_id, holder=self.holder)), timeout=10
            )
        except asyncio.TimeoutError:
            log.warning("redis unavailable at shutdown: the lease will return held messages")
            return
        except Fenced:
            log.warning("fenced off at shutdown: what this worker held was given back already")
            return
        except Exception as error:
            log.error("cannot give back at shutdown: the lease will return held messages", exc_info=error)
            return
        log.info("worker stopped", given_back=released)


def _process_scope() -> str:
    """What makes a pid mean one process: this boot of this machine and this pid namespace.

    Two containers often share a host name and pids; only a holder of the same
    boot and pid namespace can be judged gone by its pid. Empty where unknown
    (not Linux): such a holder is never judged, its lease runs out instead.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot}/{namespace}"


def new_holder() -> str:
    """A lease holder: host, pid, where that pid is meaningful, and a token of this run."""
    return f"{socket.gethostname()}:{os.getpid()}:{_process_scope()}:{uuid.uuid4().hex[:12]}"


def _holder_is_dead(holder: str) -> bool:
    """True only for a holder of this host, boot and pid namespace whose pid is gone."""
    parts = holder.split(":")
    if len(parts) != 4:
        return False  # an older ferry's holder: its lease runs out
    host, pid_text, scope, _ = parts
    if host != socket.gethostname() or not scope or scope != _process_scope() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


async def serve(settings: Settings, redis_url: str) -> int:
    """Run one worker until SIGTERM/SIGINT; the exit code says how it ended."""
    structlog.contextvars.bind_contextvars(worker_id=settings.worker_id)
    metrics = WorkerMetrics(settings.worker_id)
    if settings.worker_metrics_port:
        try:
            start_http_server(settings.worker_metrics_port, addr=settings.metrics_host, registry=metrics.registry)
        except OSError as error:
            log.error("cannot serve metrics", port=settings.worker_metrics_port, error=str(error))
            return 2
    redis = connect(redis_url)
    queue = Partitions(redis, settings.partitions)
    async with Deliverer(settings) as deliverer:
        url = metrics_url(settings.metrics_host, settings.worker_metrics_port)
        worker = Worker(settings, queue, deliverer, metrics, metrics_url=url)
        platform.on_stop(worker.stop)  # SIGTERM/SIGINT; Ctrl-C, Ctrl-Break, console close on Windows
        try:
            await worker.redis_away.call(queue.ping)  # started before Redis: wait for it
            check = await worker.redis_away.call(lambda: check_server(redis, settings.allow_evicting_redis))
            for warning in check.warnings:
                log.warning("redis setup", problem=warning)
            if upgraded := await worker.redis_away.call(queue.upgrade):
                log.info("moved an older ferry's dead letters into the current layout", count=upgraded)
            await worker.run()
        except UnsafeRedis as error:
            log.error("refusing this redis", reason=str(error))
            await redis.aclose()
            return 2
        except Exception as error:  # a RedisBug while starting: exit, for a supervisor to retry
            log.critical("worker failed", error=str(error), exc_info=error)
            await redis.aclose()
            return 1
    await redis.aclose()
    return 1 if worker.failed_task else 0


def run_worker(settings: Settings) -> int:
    configure(settings.log_level)
    redis_url, embedded = resolve_redis_url(settings)
    try:
        try:
            import uvloop

            return uvloop.run(serve(settings, redis_url))
        except ImportError:
            return asyncio.run(serve(settings, redis_url))
    finally:
        if embedded is not None:
            embedded.stop()
