"""The clients: an open loop of messages, each with its own Idempotency-Key.

Message n is due at `start + n / rate` on the run's clock whatever happened to
the ones before it (an open loop: a slow answer never delays the next send),
and goes out on one of several senders (each an aiohttp session with its own
connection pool) in turn. A send answered 503, or lost to a connection error or
a timeout, is sent again, the same body with the same key, after the
Retry-After (or a short pause), until the proxy answers 202 (`queued`: a new
message, its id recorded) or 200 (`existing`: an earlier try of this key was
stored; the first message's id recorded). A resend can therefore never make a
second copy, and the check at the end says whether one was made anyway.

It runs in a thread of its own with its own event loop, so the controller's
blocking work (signals, restarts) never holds a send back.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

CONNECTION_RETRY_SECONDS = 0.5
LONGEST_RETRY_AFTER_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 15.0
PAD = "x" * 120  # a body of about 200 bytes


@dataclass
class Send:
    """One message as its client saw it."""

    n: int
    key: str
    due: float  # monotonic
    body: bytes = b""
    first_sent_wall: float | None = None  # time.time() of the first try: the sink's clock
    sends: int = 0
    outcome: str | None = None  # queued (202), existing (200), refused (another answer), None: none yet
    message_id: str | None = None
    errors: Counter[str] = field(default_factory=Counter)


class Load:
    def __init__(
        self,
        proxy_url: str,
        ca_file: str,
        api_key: str,
        rate: float,
        senders: int,
        start: float,
        end: float,
        token: str,
    ) -> None:
        self.url = f"{proxy_url}/api/v1/messages"
        self.ca_file = ca_file
        self.api_key = api_key
        self.rate = rate
        self.senders = senders
        self.start_at = start  # monotonic: the first message is due then
        self.end_at = end  # no message is due at or after this
        self.token = token
        self.sends: list[Send] = []
        self.unexpected: list[str] = []  # answers no client should get from ferry
        self.most_late = 0.0  # how far behind its due time a send started, at worst
        self.in_flight = 0
        self._stop_resending = threading.Event()
        self._thread = threading.Thread(target=self._main, name="chaos load", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None

    # --- control, from the test's thread

    def start(self) -> None:
        self._thread.start()

    def finish(self, timeout: float) -> None:
        """Wait for the last message's answer; after `timeout`, stop resending (those stay unanswered)."""
        self._thread.join(max(0.0, self.end_at - time.monotonic()) + timeout)
        if self._thread.is_alive():
            self._stop_resending.set()
            self._thread.join(REQUEST_TIMEOUT_SECONDS + 10)
        if self.error is not None:
            raise AssertionError("the load generator failed") from self.error

    # --- the loop

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as error:  # reported by finish()
            self.error = error

    async def _run(self) -> None:
        context = ssl.create_default_context(cafile=self.ca_file)
        sessions = [
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=32))
            for _ in range(self.senders)
        ]
        tasks: set[asyncio.Task[None]] = set()
        try:
            n = 0
            while True:
                due = self.start_at + n / self.rate
                if due >= self.end_at:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                else:
                    self.most_late = max(self.most_late, -wait)
                send = Send(n, f"chaos-{self.token}-{n}", due)
                self.sends.append(send)
                task = asyncio.create_task(self._send(sessions[n % self.senders], send))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
            while tasks and not self._stop_resending.is_set():
                await asyncio.wait(set(tasks), timeout=0.5)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for session in sessions:
                await session.close()

    async def _send(self, session: aiohttp.ClientSession, send: Send) -> None:
        self.in_flight += 1
        try:
            await self._send_until_answered(session, send)
        finally:
            self.in_flight -= 1

    async def _send_until_answered(self, session: aiohttp.ClientSession, send: Send) -> None:
        send.first_sent_wall = time.time()
        send.body = json.dumps({"key": send.key, "n": send.n, "sent_at": send.first_sent_wall, "pad": PAD}).encode()
        headers = {
            "Authorization": f"Bearer {self.api_key}",
            "Content-Type": "application/json",
            "Idempotency-Key": send.key,
        }
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
        while not self._stop_resending.is_set():
            send.sends += 1
            try:
                async with session.post(self.url, data=send.body, headers=headers, timeout=timeout) as response:
                    status = response.status
                    raw = await response.read()
                    retry_after = response.headers.get("Retry-After")
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
                # Refused, reset (a proxy process SIGKILLed), or no answer in time: the
                # message may or may not be stored; the same key again is safe.
                send.errors[f"connection: {type(error).__name__}"] += 1
                await asyncio.sleep(CONNECTION_RETRY_SECONDS * random.uniform(0.5, 1.5))
                continue
            answer = _json(raw)
            if status == 202 and answer.get("status") == "queued":
                send.outcome, send.message_id = "queued", str(answer["id"])
                return
            if status == 200 and answer.get("status") == "existing":
                send.outcome, send.message_id = "existing", str(answer["id"])
                return
            code = answer.get("error", "?")
            send.errors[f"{status} {code}"] += 1
            if status == 503:
                await asyncio.sleep(_retry_after(retry_after) * random.uniform(1.0, 1.2))
                continue
            self.unexpected.append(f"{send.key}: {status} {raw[:200]!r}")
            if status >= 500:  # not a documented answer, but maybe stored: the same key again
                await asyncio.sleep(1.0)
                continue
            send.outcome = "refused"  # a 4xx: sending it again would get the same
            return

    # --- reading the results, after finish()

    def answered(self) -> dict[str, Send]:
        """The message id of every send answered 202 or 200 existing."""
        return {send.message_id: send for send in self.sends if send.message_id is not None}

    def figures(self) -> dict[str, Any]:
        errors: Counter[str] = Counter()
        for send in self.sends:
            errors.update(send.errors)
        return {
            "messages": len(self.sends),
            "accepted": sum(send.outcome == "queued" for send in self.sends),
            "existing": sum(send.outcome == "existing" for send in self.sends),
            "refused": sum(send.outcome == "refused" for send in self.sends),
            "unanswered": sum(send.outcome is None for send in self.sends),
            "resends": sum(max(0, send.sends - 1) for send in self.sends),
            "send_errors": dict(errors.most_common()),
            "most_late_start_seconds": round(self.most_late, 3),
        }


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _retry_after(header: str | None) -> float:
    try:
        seconds = float(header) if header is not None else 1.0
    except ValueError:
        seconds = 1.0
    return min(LONGEST_RETRY_AFTER_SECONDS, max(0.1, seconds))
