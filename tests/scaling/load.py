"""A steady load through a real proxy: sender threads on keep-alive HTTPS connections.

Each message has its own Idempotency-Key; a 503 or a lost connection is answered
by the same message with the same key, until it is answered (or a deadline), so
every key ends with one id and the time its answer came.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import Proxy, Sink

RESEND_DEADLINE_SECONDS = 30.0  # a message still unanswered this long after the load stops fails the test


@dataclass(frozen=True)
class Answer:
    key: str
    id: str
    status: int  # 202, or 200 for a resend whose first try was stored
    answered_at: float  # time.time() of the answer
    sent_at: float  # time.time() of the try that was answered


@dataclass
class Load:
    """Sender threads through one proxy, `interval_seconds` apart each."""

    proxy: Proxy
    name: str
    threads: int = 2
    interval_seconds: float = 0.03
    answers: list[Answer] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)  # what made a try fail, and how often
    unexpected: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for index in range(self.threads):
            thread = threading.Thread(target=self._send, args=(f"{self.name}-{index}",), daemon=True)
            self._workers.append(thread)
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=RESEND_DEADLINE_SECONDS + 10)
        assert not any(thread.is_alive() for thread in self._workers), "a sender is stuck"

    def _send(self, sender: str) -> None:
        connection: http.client.HTTPSConnection | None = None
        number = 0
        while not self._stop.is_set():
            key = f"{sender}-{number}"
            number += 1
            connection = self._until_answered(key, connection)
            time.sleep(self.interval_seconds)

    def _until_answered(
        self, key: str, connection: http.client.HTTPSConnection | None
    ) -> http.client.HTTPSConnection | None:
        body = json.dumps({"key": key}).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.proxy.api_key}", "Idempotency-Key": key}
        deadline = None
        while True:
            if self._stop.is_set():
                deadline = deadline or time.monotonic() + RESEND_DEADLINE_SECONDS
                if time.monotonic() > deadline:
                    self._note_unexpected(f"{key}: unanswered at the deadline")
                    return connection
            sent_at = time.time()
            try:
                if connection is None:
                    connection = http.client.HTTPSConnection(
                        "localhost", self.proxy.port, timeout=10, context=self.proxy.context()
                    )
                connection.request("POST", "/api/v1/messages", body=body, headers=headers)
                response = connection.getresponse()
                answer = json.loads(response.read() or b"{}")
            except (OSError, http.client.HTTPException) as error:
                self._note_refusal(f"connection: {type(error).__name__}")
                connection = None
                time.sleep(0.05)
                continue
            if response.status in (200, 202):
                with self._lock:
                    self.answers.append(Answer(key, answer["id"], response.status, time.time(), sent_at))
                return connection
            if response.status == 503:
                self._note_refusal(f"503 {answer.get('error')}")
                time.sleep(0.05)
                continue
            self._note_unexpected(f"{key}: {response.status} {answer}")
            return connection

    def _note_refusal(self, what: str) -> None:
        with self._lock:
            self.refusals[what] = self.refusals.get(what, 0) + 1

    def _note_unexpected(self, what: str) -> None:
        with self._lock:
            self.unexpected.append(what)


def delivered(sink: Sink) -> dict[str, float]:
    """Every message id the sink stored, with when it first arrived (time.time())."""
    database = Path(sink.args[sink.args.index("--db") + 1])
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        return dict(connection.execute("SELECT id, first_seen FROM messages").fetchall())
