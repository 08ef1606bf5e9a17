"""A steady load through a real proxy: sender threads on keep-alive HTTPS connections.

Each message has its own Idempotency-Key; a 503 or a lost connection is answered
by the same message with the same key, until it is answered (or a deadline), so
every key ends with one id and the time its answer came.

And what a load through a master's SIGKILL must show, whoever promotes its replica
(Sentinel or a Cluster): `load_until_resumed`, then `judge_failover`.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ferry.queue.keys import Keys
from tests.support.processes import FerryProcess, Proxy, Sink, wait_until

RESEND_DEADLINE_SECONDS = 30.0  # a message still unanswered this long after the load stops fails the test
REPLICATION_LAG_SECONDS = 1.0  # normal mode may lose what the old master answered this long before it died
BEFORE_KILL_SECONDS = 2.0  # the gap around a kill is measured from the deliveries this long before it


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

    def sent_after(self, moment: float) -> list[Answer]:
        """The answers to tries sent after `moment` (time.time())."""
        with self._lock:
            return [answer for answer in self.answers if answer.sent_at > moment]

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


def post_each(proxy: Proxy, sink: Sink, count: int) -> list[str]:
    """POST `count` messages one after another, each answered 202, and wait until the sink
    has them all: their ids."""
    answered = []
    for number in range(count):
        status, _, body = proxy.post(b'{"n": %d}' % number)
        assert status == 202, body
        answered.append(body["id"])
    wait_until(lambda: set(answered) <= delivered(sink).keys(), timeout=30)
    return answered


def start_loads(strict: Proxy, normal: Proxy, before_kill_seconds: float) -> dict[str, Load]:
    """A load through each proxy, running `before_kill_seconds` already. A strict 202 waits for
    a replica's fsync (reported once a second): more senders, whose messages the proxy stores together."""
    loads = {"strict": Load(strict, "strict", threads=8, interval_seconds=0), "normal": Load(normal, "normal")}
    for load in loads.values():
        load.start()
    time.sleep(before_kill_seconds)
    return loads


def load_until_resumed(
    loads: dict[str, Load],
    sink: Sink,
    killed_at: float,
    partition: tuple[redis.Redis, Keys] | None = None,
    timeout: float = 30,
) -> float:
    """Keep the loads going until every proxy answered a message sent after the kill and
    the sink has one of those (with `partition`, one that this partition's master, the
    killed one's successor, says is delivered): the window then holds the whole pause, as
    the proxies and the workers met it. Returns when the loads stopped (time.time())."""

    def resumed() -> bool:
        after = [load.sent_after(killed_at) for load in loads.values()]
        if not all(after):
            return False
        ids = {answer.id for answers in after for answer in answers} & delivered(sink).keys()
        if partition is None or not ids:
            return bool(ids)
        master, keys = partition
        with master.pipeline(transaction=False) as pipe:
            for message_id in ids:
                pipe.hget(keys.message(message_id), "status")
            return b"delivered" in pipe.execute()

    wait_until(resumed, timeout=timeout, interval=0.1)
    for load in loads.values():
        load.stop()
    return time.time()


def delivery_gap(sink: Sink, killed_at: float, stopped_at: float) -> float:
    """The longest time the sink saw no new message, from shortly before the kill until
    the loads stopped."""
    firsts = sorted(seen for seen in delivered(sink).values() if killed_at - BEFORE_KILL_SECONDS < seen < stopped_at)
    return max(later - earlier for earlier, later in zip(firsts, firsts[1:]))


def wait_for_renewed_leases(
    master: redis.Redis, keys: Keys, workers: list[FerryProcess], since: float, lease_seconds: float
) -> None:
    """Until each worker renewed its lease on `master` after `since` (its heartbeat key's
    TTL is longer than one set before then could be): by then each worker has met what
    became of its lease in the failover, and one fenced off says so in its log."""

    def renewed(worker: FerryProcess) -> bool:
        left_ms = master.pttl(keys.heartbeat(worker.env["WORKER_ID"]))
        return left_ms > (since + lease_seconds - time.time()) * 1000

    wait_until(lambda: all(renewed(worker) for worker in workers), timeout=lease_seconds * 2)


@dataclass(frozen=True)
class Failover:
    """What a strict and a normal load through a master's SIGKILL came to."""

    strict_answered: int
    normal_answered: int
    lost: list[str]  # normal mode's: answered 202, gone with the old master
    resumed: dict[str, float]  # seconds from the kill to each load's first answer of a try sent after it
    delivery_gap: float  # see `delivery_gap`


def judge_failover(
    loads: dict[str, Load], sink: Sink, master: redis.Redis, killed_at: float, stopped_at: float
) -> Failover:
    """The guarantees of a failover, whoever promoted the replica now `master`: no load met
    an unexpected answer; every message the strict load had answered is delivered, and
    says so on the new master; what the normal load lost was answered in the last moment
    before the kill. Waits for the queue to drain first."""
    for name, load in loads.items():
        assert not load.unexpected, f"{name}: {load.unexpected[:5]}"
    strict_ids = {answer.id for answer in loads["strict"].answers}
    normal_ids = {answer.id for answer in loads["normal"].answers}
    wait_until(lambda: strict_ids <= delivered(sink).keys(), timeout=30)
    keys = Keys()

    def drained() -> bool:
        in_flight = sum(master.zcard(key) for key in master.scan_iter(keys.in_flight_prefix + "*"))
        return master.llen(keys.queue) == 0 and master.zcard(keys.retry) == 0 and in_flight == 0

    wait_until(drained, timeout=30)
    stored = delivered(sink)

    # Strict, one replica: nothing answered 202 is lost, and its status says delivered.
    assert strict_ids - stored.keys() == set()
    with master.pipeline(transaction=False) as pipe:
        for message_id in strict_ids:
            pipe.hget(keys.message(message_id), "status")
        assert set(pipe.execute()) == {b"delivered"}

    # Normal: the loss is what the old master acknowledged just before it died, and no more.
    answered = {answer.id: answer for answer in loads["normal"].answers}
    lost = sorted(normal_ids - stored.keys())
    for message_id in lost:
        age = killed_at - answered[message_id].answered_at
        assert 0 <= age < REPLICATION_LAG_SECONDS, f"{message_id} answered {age:.3f} s before the kill, lost"

    resumed = {
        name: min(answer.answered_at for answer in load.sent_after(killed_at + 0.001)) - killed_at
        for name, load in loads.items()
    }
    return Failover(len(strict_ids), len(normal_ids), lost, resumed, delivery_gap(sink, killed_at, stopped_at))
