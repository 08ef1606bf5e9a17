"""The faults: a seeded schedule, and the controller that injects them and watches recovery.

Three timelines run side by side, each a shuffled cycle of its kinds, laid end
to end with seeded gaps: Redis (SIGKILL and a restart from its append-only
file; out of memory; read-only), the main server (an outage; slow; slower than
the delivery timeout; flaky, a share of 503s) and processes (SIGKILL a worker,
SIGKILL a proxy process, SIGSTOP a worker past its lease and SIGCONT it). The
same seed gives the same schedule; which worker a kill takes is drawn from the
same generator among the workers alive at that moment.

After each process fault the controller watches for recovery: a killed worker
replaced by the supervisor and holding its lease again, a killed proxy process
replaced by uvicorn's supervisor, a stopped worker fenced off and rejoined
under a new lease holder. What does not recover in time is a finding.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from tests.chaos.stack import Stack, Timings
from tests.chaos.tracker import Seen, is_alive

REDIS_KINDS = ("redis_kill", "redis_oom", "redis_readonly")
SINK_KINDS = ("sink_outage", "sink_slow", "sink_timeout", "sink_flaky")
PROCESS_KINDS = ("worker_kill", "proxy_kill", "worker_zombie")
ALL_KINDS = REDIS_KINDS + SINK_KINDS + PROCESS_KINDS
# The supervisor gives a worker up after 5 crashes in 60 s: chaos must not make it.
MOST_KILLS_PER_WORKER_A_MINUTE = 2
RECOVERY_SECONDS = 45.0  # a replacement has this long to be up and holding its lease

DESCRIPTIONS = {
    "redis_kill": "SIGKILL Valkey, restart it from its AOF",
    "redis_oom": "Valkey refuses writes: CONFIG SET maxmemory 1 (OOM)",
    "redis_readonly": "Valkey refuses writes: REPLICAOF a dead port (READONLY)",
    "sink_outage": "main server down (POST /outage)",
    "sink_slow": "main server slow (latency under the delivery timeout)",
    "sink_timeout": "main server slower than the delivery timeout",
    "sink_flaky": "main server flaky (a share of 503s)",
    "worker_kill": "SIGKILL a worker",
    "proxy_kill": "SIGKILL a proxy process",
    "worker_zombie": "SIGSTOP a worker past its lease, then SIGCONT",
}

# What a fault's `recovered_after` measures.
RECOVERY = {
    "worker_kill": "replaced and holding its lease, after the kill",
    "proxy_kill": "replaced by uvicorn, after the kill",
    "worker_zombie": "holding its lease again, after SIGCONT",
    "redis_kill": "taking writes, after the restart began",
}


@dataclass
class Fault:
    kind: str
    at: float  # planned start, seconds after the run's clock started
    seconds: float  # planned length (0: an instant fault)
    params: dict[str, Any] = field(default_factory=dict)
    started: float | None = None  # when it was injected
    ended: float | None = None  # when it was undone
    target: str = ""
    notes: list[str] = field(default_factory=list)
    recovered_after: float | None = None  # seconds from the fault (or its end) to recovery

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "what": DESCRIPTIONS[self.kind],
            "planned_at": self.at,
            "planned_seconds": self.seconds,
            "started": None if self.started is None else round(self.started, 2),
            "ended": None if self.ended is None else round(self.ended, 2),
            "target": self.target,
            "params": self.params,
            "notes": self.notes,
            "recovered_after": None if self.recovered_after is None else round(self.recovered_after, 2),
        }


def plan(rng: random.Random, start: float, end: float, timings: Timings) -> list[Fault]:
    """Every fault of a run, between `start` and `end` seconds; every kind at least once."""
    faults: list[Fault] = []

    def shape(kind: str) -> tuple[float, dict[str, Any]]:
        if kind == "redis_kill":
            return rng.uniform(1.0, 3.0), {}
        if kind in ("redis_oom", "redis_readonly", "sink_outage"):
            return rng.uniform(2.0, 4.0), {}
        if kind == "sink_slow":
            return rng.uniform(3.0, 5.0), {"latency_ms": round(rng.uniform(200, 800))}
        if kind == "sink_timeout":
            return rng.uniform(2.0, 4.0), {"latency_ms": round(timings.delivery_timeout * 1000 + 500)}
        if kind == "sink_flaky":
            return rng.uniform(3.0, 5.0), {"fail_rate": round(rng.uniform(0.3, 0.6), 2), "status": 503}
        if kind == "worker_zombie":
            return rng.uniform(2.0, 3.0) * timings.lease_seconds, {}
        return 0.0, {}

    def timeline(kinds: tuple[str, ...], gap: tuple[float, float]) -> None:
        at = start + rng.uniform(0.0, 2.0)
        while True:
            order = list(kinds)
            rng.shuffle(order)
            for kind in order:
                seconds, params = shape(kind)
                if at + seconds > end:
                    return
                faults.append(Fault(kind, round(at, 2), round(seconds, 2), params))
                at += seconds + rng.uniform(*gap)

    def spread(kind: str, every: float) -> None:
        """One fault per `every` seconds (at least one), each at a random time in its share."""
        count = max(1, int((end - start) // every))
        share = (end - start) / count
        for index in range(count):
            seconds, params = shape(kind)
            latest = max(start + index * share, start + (index + 1) * share - seconds)
            at = rng.uniform(start + index * share, latest)
            faults.append(Fault(kind, round(at, 2), round(seconds, 2), params))

    timeline(REDIS_KINDS, (2.0, 4.0))
    timeline(SINK_KINDS, (1.5, 3.0))
    at = start + rng.uniform(0.0, 4.0)
    while at < end:
        faults.append(Fault("worker_kill", round(at, 2), 0.0))
        at += rng.uniform(5.0, 10.0)
    spread("proxy_kill", 60.0)
    spread("worker_zombie", 60.0)
    missing = set(ALL_KINDS) - {fault.kind for fault in faults}
    if missing:
        raise ValueError(f"a fault window of {end - start:g} s is too short for {sorted(missing)}")
    return sorted(faults, key=lambda fault: fault.at)


def _holder_pid(holder: str | None) -> int | None:
    """The pid in a lease holder `host:pid:scope:token`."""
    if holder is None:
        return None
    parts = holder.split(":")
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


@dataclass
class Watch:
    """A recovery the controller waits for: `check` says done (and notes how) or not yet."""

    fault: Fault
    since: float
    deadline: float
    check: Callable[[float], bool]
    failure: str


class Controller:
    def __init__(
        self, stack: Stack, rng: random.Random, clock_start: float, faults: list[Fault], log: Callable[[str], None]
    ) -> None:
        self.stack = stack
        self.tracker = stack.tracker
        self.rng = rng
        self.clock_start = clock_start
        self.faults = faults
        self.log = log
        self.watches: list[Watch] = []
        self.findings: list[str] = []
        self.harness_problems: list[str] = []
        self.kills: list[tuple[float, str]] = []
        self.zombie: str | None = None  # stopped now, or not yet seen rejoining: no kill takes it
        self._stopped: Seen | None = None
        self._last_scan = 0.0

    def now(self) -> float:
        return time.monotonic() - self.clock_start

    # --- the schedule

    def run(self, progress: Callable[[], str]) -> None:
        events: list[tuple[float, int, int, Fault]] = []
        for index, fault in enumerate(self.faults):
            events.append((fault.at, 0, index, fault))
            if fault.seconds:
                events.append((fault.at + fault.seconds, 1, index, fault))
        events.sort(key=lambda event: event[:3])
        next_progress = 0.0
        for at, phase, _, fault in events:
            while self.now() < at:
                self.tick()
                if self.now() >= next_progress:
                    self.log(f"progress: {progress()}")
                    next_progress = self.now() + 10.0
                time.sleep(max(0.0, min(0.25, at - self.now())))
            self._do(fault, "start" if phase == 0 else "end")

    def _do(self, fault: Fault, phase: str) -> None:
        action = getattr(self, f"_{phase}_{fault.kind}")
        if phase == "start":
            fault.started = self.now()
        try:
            action(fault)
        except Exception as error:  # the harness could not inject or undo it: said, not hidden
            problem = f"{fault.kind} {phase} at {self.now():.1f} s failed: {error!r}"
            fault.notes.append(problem)
            self.harness_problems.append(problem)
        if phase == "end" or not fault.seconds:
            fault.ended = self.now()
        self.log(f"{phase} {fault.kind} {fault.target} {fault.params or ''} {'; '.join(fault.notes)}".rstrip())

    def tick(self) -> None:
        if time.monotonic() - self._last_scan >= 0.5:
            self.tracker.scan()  # every process the run ever had, for the check at the end
            self._last_scan = time.monotonic()
        now = self.now()
        for watch in list(self.watches):
            if watch.check(now):
                self.watches.remove(watch)
            elif now > watch.deadline:
                self.watches.remove(watch)
                self.findings.append(f"{watch.failure} (fault at {watch.since:.1f} s)")
                watch.fault.notes.append(f"NOT RECOVERED: {watch.failure}")

    def settle(self, timeout: float) -> None:
        """After the last fault: wait for the pending recoveries (each within its own deadline)."""
        limit = self.now() + timeout
        while self.watches and self.now() < limit:
            self.tick()
            time.sleep(0.25)
        for watch in self.watches:
            self.findings.append(f"{watch.failure} (fault at {watch.since:.1f} s; still waiting at the end)")
            watch.fault.notes.append(f"NOT RECOVERED: {watch.failure}")
        self.watches.clear()

    def undo_all(self) -> None:
        """Whatever the schedule did, no fault stays on once it is over."""
        if self._stopped is not None:
            try:
                os.kill(self._stopped.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if self.stack.redis.process is None:
            self.stack.start_redis()
        self._admin(lambda client: client.config_set("maxmemory", 0))
        self._admin(lambda client: client.execute_command("REPLICAOF", "NO", "ONE"))
        status, answer = self.stack.sink_post("/faults", {"fail_rate": 0, "latency_ms": 0})
        if status != 200:
            self.harness_problems.append(f"the sink's faults could not be reset: {status} {answer!r}")

    # --- helpers

    def _admin(self, command: Callable[[redis.Redis], Any], tries: int = 20) -> Any:
        """A command to Valkey, tried again for a few seconds: undoing a fault must not be skipped."""
        last: Exception | None = None
        for _ in range(tries):
            client = self.stack.redis_client()
            try:
                return command(client)
            except redis.RedisError as error:
                last = error
                time.sleep(0.25)
            finally:
                client.close()
        raise RuntimeError(f"Valkey did not take the command: {last!r}")

    def _sink(self, path: str, body: dict[str, Any], expect: int = 200) -> None:
        for _ in range(20):
            status, answer = self.stack.sink_post(path, body)
            if status == expect:
                return
            time.sleep(0.25)
        raise RuntimeError(f"the sink answered {status} {answer!r} to {path} {body}")

    def _watch(self, fault: Fault, failure: str, check: Callable[[float], bool], seconds: float) -> None:
        now = self.now()
        self.watches.append(Watch(fault, now, now + seconds, check, failure))

    # --- workers

    def _start_worker_kill(self, fault: Fault) -> None:
        now = self.now()
        workers = self.tracker.workers()
        recent = Counter(worker for at, worker in self.kills if now - at < 60.0)
        candidates = sorted(
            worker for worker in workers if worker != self.zombie and recent[worker] < MOST_KILLS_PER_WORKER_A_MINUTE
        )
        if not candidates:
            fault.notes.append("skipped: no worker may be killed now")
            return
        worker = self.rng.choice(candidates)
        victim = workers[worker]
        os.kill(victim.pid, signal.SIGKILL)
        self.kills.append((now, worker))
        fault.target = f"{worker} pid {victim.pid}"

        def replaced(at: float) -> bool:
            successor = self.tracker.workers().get(worker)
            if successor is None or successor.pid == victim.pid:
                return False
            if _holder_pid(self.stack.lease_holders().get(worker)) != successor.pid:
                return False
            fault.recovered_after = at - now
            fault.notes.append(f"replaced by pid {successor.pid}, holding the lease {at - now:.1f} s later")
            return True

        self._watch(fault, f"{worker} (pid {victim.pid} SIGKILLed) was not replaced", replaced, RECOVERY_SECONDS)

    def _start_worker_zombie(self, fault: Fault) -> None:
        workers = self.tracker.workers()
        holders = self.stack.lease_holders()
        # A worker that holds its own lease now: one that is starting, or whose lease
        # lapsed in a Redis outage, would have no lease to be fenced off from.
        candidates = sorted(worker for worker, seen in workers.items() if _holder_pid(holders.get(worker)) == seen.pid)
        if not candidates:
            fault.notes.append("no worker holds its lease now: stopping one that does not")
            candidates = sorted(workers)
        if not candidates:
            fault.notes.append("skipped: no worker alive")
            return
        worker = self.rng.choice(candidates)
        victim = workers[worker]
        before = holders.get(worker)
        os.kill(victim.pid, signal.SIGSTOP)
        self.zombie, self._stopped = worker, victim
        fault.target = f"{worker} pid {victim.pid}"
        fault.params["holder_before"] = before

    def _end_worker_zombie(self, fault: Fault) -> None:
        victim = self._stopped
        if victim is None:
            return
        os.kill(victim.pid, signal.SIGCONT)
        self._stopped = None
        worker, before, resumed = self.zombie, fault.params.get("holder_before"), self.now()
        lease = self.stack.timings.lease_seconds

        def rejoined(at: float) -> bool:
            if not is_alive(victim):
                fault.notes.append(f"the resumed worker exited {at - resumed:.1f} s after SIGCONT")
                self.findings.append(f"{worker} (pid {victim.pid}) exited after SIGCONT instead of rejoining")
                self.zombie = None
                return True
            holder = self.stack.lease_holders().get(worker or "")
            if _holder_pid(holder) != victim.pid:
                return False
            fault.recovered_after = at - resumed
            if holder != before and _holder_pid(before) == victim.pid:
                fault.notes.append(f"fenced off; rejoined as a new lease holder {at - resumed:.1f} s after SIGCONT")
            elif holder != before:
                fault.notes.append(f"held no lease when stopped; holds one {at - resumed:.1f} s after SIGCONT")
            elif at - resumed > 3 * lease:
                fault.notes.append("kept its old lease: nobody reaped it while it was stopped")
            else:
                return False
            self.zombie = None
            return True

        self._watch(fault, f"{worker} (pid {victim.pid}) did not rejoin after SIGCONT", rejoined, 10 * lease + 20)

    # --- the proxy

    def _start_proxy_kill(self, fault: Fault) -> None:
        processes = self.tracker.proxy_processes()
        if not processes:
            fault.notes.append("skipped: no proxy process alive")
            return
        victim = self.rng.choice(processes)
        os.kill(victim.pid, signal.SIGKILL)
        fault.target = f"pid {victim.pid}"
        now = self.now()

        def restarted(at: float) -> bool:
            pids = [seen.pid for seen in self.tracker.proxy_processes()]
            if len(pids) < len(processes) or victim.pid in pids:
                return False
            fault.recovered_after = at - now
            fault.notes.append(f"uvicorn started pid {max(pids)} in its place {at - now:.1f} s later")
            return True

        self._watch(fault, f"the SIGKILLed proxy process (pid {victim.pid}) was not replaced", restarted, RECOVERY_SECONDS)

    # --- Redis

    def _start_redis_kill(self, fault: Fault) -> None:
        process = self.stack.redis.process
        fault.target = f"pid {process.pid if process else '?'}"
        self.stack.redis.kill()

    def _end_redis_kill(self, fault: Fault) -> None:
        took = self.stack.start_redis()
        fault.recovered_after = took
        fault.notes.append(f"restarted from its AOF, taking writes {took:.2f} s after start")

    def _start_redis_oom(self, fault: Fault) -> None:
        self._admin(lambda client: client.config_set("maxmemory", 1))

    def _end_redis_oom(self, fault: Fault) -> None:
        self._admin(lambda client: client.config_set("maxmemory", 0))

    def _start_redis_readonly(self, fault: Fault) -> None:
        port = self.stack.dead_port
        self._admin(lambda client: client.execute_command("REPLICAOF", "127.0.0.1", port))

    def _end_redis_readonly(self, fault: Fault) -> None:
        self._admin(lambda client: client.execute_command("REPLICAOF", "NO", "ONE"))

    # --- the main server

    def _start_sink_outage(self, fault: Fault) -> None:
        self._sink("/outage", {"seconds": fault.seconds}, expect=202)

    def _end_sink_outage(self, fault: Fault) -> None:
        deadline = time.monotonic() + 15.0
        while not self.stack.sink_answers():
            if time.monotonic() > deadline:
                raise RuntimeError("the sink did not listen again after its outage")
            time.sleep(0.1)

    def _start_sink_slow(self, fault: Fault) -> None:
        self._sink("/faults", {"latency_ms": fault.params["latency_ms"]})

    def _end_sink_slow(self, fault: Fault) -> None:
        self._sink("/faults", {"latency_ms": 0})

    _start_sink_timeout = _start_sink_slow
    _end_sink_timeout = _end_sink_slow

    def _start_sink_flaky(self, fault: Fault) -> None:
        self._sink("/faults", {"fail_rate": fault.params["fail_rate"], "status": fault.params["status"]})

    def _end_sink_flaky(self, fault: Fault) -> None:
        self._sink("/faults", {"fail_rate": 0})
