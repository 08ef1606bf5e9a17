"""Dead-letter administration: the queue's operations, `ferry dead`, the proxy's admin routes."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ferry.queue import Queue
from ferry.queue.queue import SCRIPT_CHUNK
from ferry.queue.connection import connect
from ferry.queue.message import NewMessage, Status, new_message_id
from tests.support.inspect import client, dead_ids, enqueue, queue_length, status, with_queue
from tests.support.processes import Proxy, Sink, ferry_command, wait_until
from tests.support.worker import InProcessWorker

StartSink = Callable[..., Sink]
RunWorker = Callable[..., InProcessWorker]
StartProxy = Callable[..., Proxy]

ADMIN_KEY = "admin-key"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[Queue]:
    redis = connect(redis_url)
    yield Queue(redis)
    await redis.aclose()


async def bury(queue: Queue, count: int, error: str = "HTTP 422: refused") -> list[str]:
    """`count` new messages, each delivered once and dead-lettered; ids in the order they died."""
    sent = [NewMessage(new_message_id(), b'{"n": %d}' % n, "application/json") for n in range(count)]
    for start in range(0, count, 500):
        await queue.enqueue(sent[start : start + 500])
    await queue.heartbeat("w1", "test", 30, take=True)
    claimed = await queue.claim("w1", count, holder="test")
    for message in claimed:
        assert await queue.bury("w1", message.id, error, holder="test")
    return [message.id for message in claimed]


def bury_now(redis_url: str, count: int, error: str = "HTTP 422: refused") -> list[str]:
    return with_queue(redis_url, lambda queue: bury(queue, count, error))


def message_hash(redis_url: str, message_id: str) -> dict[bytes, bytes]:
    return client(redis_url).hgetall(f"{{message_queue}}:msg:{message_id}")  # type: ignore[return-value]


# The library, on Redis and on Valkey


@pytest.mark.both_servers
async def test_dead_letters_pages_most_recent_first_with_attempts_error_and_times(queue: Queue) -> None:
    first = await bury(queue, 2, "HTTP 410: gone")
    last = await bury(queue, 1, "HTTP 422: bad order")

    page = await queue.dead_letters(limit=2)
    assert [letter.id for letter in page] == [last[0], first[1]]
    newest = page[0]
    assert newest.attempts == 1 and newest.last_error == "HTTP 422: bad order"
    assert 0 < newest.created_at_ms <= newest.died_at_ms
    assert 0 <= newest.age_seconds() < 10
    assert [letter.id for letter in await queue.dead_letters(limit=2, offset=2)] == [first[0]]
    assert await queue.dead_letters(limit=10, offset=3) == []


@pytest.mark.both_servers
async def test_replay_names_the_ids_that_were_not_dead_letters_and_moves_nothing_twice(queue: Queue) -> None:
    [dead] = await bury(queue, 1)
    [queued] = await queue.enqueue([NewMessage(new_message_id(), b"{}", "application/json")])

    handled = await queue.replay([dead, queued.id, "no-such-id", dead])
    assert handled.count == 1 and handled.not_dead == (queued.id, "no-such-id")
    assert await queue.dead_size() == 0
    assert sorted(await queue.redis.lrange(queue.keys.queue, 0, -1)) == sorted([dead.encode(), queued.id.encode()])
    replayed = await queue.status(dead)
    assert replayed is not None and replayed.status is Status.QUEUED and replayed.attempts == 0


@pytest.mark.both_servers
async def test_replay_all_goes_in_chunks_and_queues_the_longest_dead_first(queue: Queue) -> None:
    ids = await bury(queue, SCRIPT_CHUNK * 2 + 5)

    handled = await queue.replay_all()
    assert handled.count == len(ids) and handled.not_dead == ()
    assert await queue.dead_size() == 0
    # Workers take from the right: the first to die is the first out again.
    assert [raw.decode() for raw in await queue.redis.lrange(queue.keys.queue, 0, -1)] == ids[::-1]
    again = await queue.claim("w1", 1, holder="test")
    assert again[0].id == ids[0] and again[0].attempt == 1


@pytest.mark.both_servers
async def test_purge_deletes_dead_letters_with_their_bodies_and_nothing_else(queue: Queue) -> None:
    doomed, kept = await bury(queue, 2)
    [queued] = await queue.enqueue([NewMessage(new_message_id(), b"{}", "application/json")])

    handled = await queue.purge([doomed, queued.id])
    assert handled.count == 1 and handled.not_dead == (queued.id,)
    assert not await queue.redis.exists(queue.keys.message(doomed))
    assert [letter.id for letter in await queue.dead_letters()] == [kept]
    still = await queue.status(queued.id)
    assert still is not None and still.status is Status.QUEUED and await queue.size() == 1


@pytest.mark.both_servers
async def test_purge_of_all_empties_the_list_in_chunks_and_frees_every_body(queue: Queue) -> None:
    ids = await bury(queue, SCRIPT_CHUNK + 7)
    handled = await queue.purge()
    assert handled.count == len(ids)
    assert await queue.dead_size() == 0
    assert await queue.redis.keys(queue.keys.message_prefix + "*") == []
    assert (await queue.purge()).count == 0 and (await queue.replay_all()).count == 0


# `ferry dead`, run as an operator runs it


def ferry(*args: str, redis_url: str | None, home: Path, columns: int = 200) -> subprocess.CompletedProcess[str]:
    """`ferry ...` off a terminal (stdin is /dev/null), with REDIS_URL only when given."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update({"FERRY_HOME": str(home), "COLUMNS": str(columns)})
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return subprocess.run(
        [ferry_command(), *args],
        env=env,
        cwd=home.parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dead_list_shows_id_attempts_age_and_last_error(redis_url: str, tmp_path: Path) -> None:
    older = bury_now(redis_url, 1, "HTTP 410: gone")
    [newest] = bury_now(redis_url, 1, "HTTP 422: field [amount] is\nmissing")

    shown = ferry("dead", "list", redis_url=redis_url, home=tmp_path / "home")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    row = next(line for line in lines if newest in line)
    assert "HTTP 422: field [amount] is missing" in row  # one line, and no Rich markup
    assert re.search(r"\s1\s.*\s\d+s\s", row)  # attempts, then the age
    assert lines.index(row) < lines.index(next(line for line in lines if older[0] in line))
    assert "2 of 2 dead letters" in shown.stdout
    narrow = ferry("dead", "list", redis_url=redis_url, home=tmp_path / "home", columns=80)
    assert newest in narrow.stdout and older[0] in narrow.stdout  # the error gives way, never an id

    listed = ferry("dead", "list", "--json", "--limit", "1", redis_url=redis_url, home=tmp_path / "home")
    as_json = json.loads(listed.stdout)
    assert as_json["total"] == 2 and [letter["id"] for letter in as_json["dead_letters"]] == [newest]
    assert as_json["dead_letters"][0]["last_error"] == "HTTP 422: field [amount] is\nmissing"


def test_dead_replay_by_id_and_all_and_only_one_of_them(redis_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    first, second, third = bury_now(redis_url, 3)

    by_id = ferry("dead", "replay", first, "not-a-dead-letter", redis_url=redis_url, home=home)
    assert by_id.returncode == 1
    assert by_id.stdout.strip() == "replayed 1 dead letter"
    assert "not-a-dead-letter" in by_id.stderr and first not in by_id.stderr
    assert sorted(dead_ids(redis_url)) == sorted([second, third]) and queue_length(redis_url) == 1

    for wrong in (["dead", "replay"], ["dead", "replay", "--all", second]):
        refused = ferry(*wrong, redis_url=redis_url, home=home)
        assert refused.returncode == 2 and "exactly one" in refused.stderr
    assert len(dead_ids(redis_url)) == 2

    everything = ferry("dead", "replay", "--all", redis_url=redis_url, home=home)
    assert (everything.returncode, everything.stdout.strip()) == (0, "replayed 2 dead letters")
    assert dead_ids(redis_url) == [] and queue_length(redis_url) == 3
    assert status(redis_url, third).status == "queued" and status(redis_url, third).attempts == 0


def test_dead_purge_refuses_without_yes_off_a_terminal_and_deletes_bodies_with_it(
    redis_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    first, second, third = bury_now(redis_url, 3)

    refused = ferry("dead", "purge", "--all", redis_url=redis_url, home=home)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert len(dead_ids(redis_url)) == 3 and message_hash(redis_url, first)

    one = ferry("dead", "purge", "--yes", first, redis_url=redis_url, home=home)
    assert (one.returncode, one.stdout.strip()) == (0, "purged 1 dead letter")
    assert message_hash(redis_url, first) == {} and sorted(dead_ids(redis_url)) == sorted([second, third])

    rest = ferry("dead", "purge", "--all", "--yes", redis_url=redis_url, home=home)
    assert (rest.returncode, rest.stdout.strip()) == (0, "purged 2 dead letters")
    assert dead_ids(redis_url) == [] and message_hash(redis_url, third) == {}


def on_terminal(args: list[str], env: dict[str, str], answers: list[tuple[str, str]]) -> tuple[int, str]:
    """Run with a pseudo-terminal as stdin and stdout; type each answer once its prompt shows."""
    primary, secondary = os.openpty()
    process = subprocess.Popen(args, env=env, stdin=secondary, stdout=secondary, stderr=secondary)
    os.close(secondary)
    seen = ""
    pending = list(answers)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(primary, 4096).decode(errors="replace")
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        if pending and pending[0][0] in seen:
            os.write(primary, pending.pop(0)[1].encode())
        if process.poll() is not None and not ready:
            break
    os.close(primary)
    return process.wait(timeout=10), seen


def test_dead_purge_asks_on_a_terminal(redis_url: str, tmp_path: Path) -> None:
    [kept] = bury_now(redis_url, 1)
    env = {**os.environ, "REDIS_URL": redis_url, "FERRY_HOME": str(tmp_path / "home")}
    command = [ferry_command(), "dead", "purge", "--all"]

    code, seen = on_terminal(command, env, [("for good?", "n\n")])
    assert code == 1 and "Delete 1 dead letter(s) and their bodies for good?" in seen
    assert dead_ids(redis_url) == [kept]

    code, seen = on_terminal(command, env, [("for good?", "y\n")])
    assert code == 0 and "purged 1 dead letter" in seen
    assert dead_ids(redis_url) == [] and message_hash(redis_url, kept) == {}


def test_dead_commands_never_start_a_redis_of_their_own(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for args in (["dead", "list"], ["dead", "replay", "--all"], ["dead", "purge", "--all", "--yes"]):
        answer = ferry(*args, redis_url=None, home=home)
        assert answer.returncode == 2
        assert "no Redis: set REDIS_URL or start ferry" in answer.stderr
    assert not (home / "valkey").exists()


def test_dead_commands_say_so_when_redis_does_not_answer(tmp_path: Path) -> None:
    answer = ferry("dead", "list", redis_url="redis://127.0.0.1:1", home=tmp_path / "home")
    assert answer.returncode == 2 and "Redis at redis://127.0.0.1:1 does not answer" in answer.stderr


# The proxy's admin routes


def test_admin_routes_list_replay_and_purge_with_an_admin_key(redis_url: str, start_proxy: StartProxy) -> None:
    proxy = start_proxy(redis_url, FERRY_ADMIN_API_KEYS=f"other-admin, {ADMIN_KEY}")
    first, second, third = bury_now(redis_url, 3, "HTTP 404: no such order")

    code, _, page = proxy.request("GET", "/api/v1/dead-letters?limit=2", key=ADMIN_KEY)
    assert code == 200 and (page["total"], page["limit"], page["offset"]) == (3, 2, 0)
    assert [letter["id"] for letter in page["dead_letters"]] == [third, second]
    letter = page["dead_letters"][0]
    assert letter["attempts"] == 1 and letter["last_error"] == "HTTP 404: no such order"
    assert letter["died_at"].endswith("+00:00") and letter["age_seconds"] >= 0

    body = json.dumps({"ids": [first, "not-dead"]}).encode()
    code, _, answer = proxy.request("POST", "/api/v1/dead-letters/replay", body, JSON, key=ADMIN_KEY)
    assert (code, answer) == (200, {"replayed": 1, "not_dead": ["not-dead"]})
    assert status(redis_url, first).status == "queued"

    code, _, answer = proxy.request("POST", "/api/v1/dead-letters/purge", b'{"all": true}', JSON, key=ADMIN_KEY)
    assert (code, answer) == (200, {"purged": 2, "not_dead": []})
    assert dead_ids(redis_url) == [] and message_hash(redis_url, second) == {}

    for wrong in (b'{"ids": []}', b'{"all": false}', b'{"ids": ["a"], "all": true}', b"{}", b"not json"):
        code, _, answer = proxy.request("POST", "/api/v1/dead-letters/replay", wrong, JSON, key=ADMIN_KEY)
        assert (code, answer["error"]) == (422, "invalid_request"), wrong
    code, _, answer = proxy.request("GET", "/api/v1/dead-letters?limit=0", key=ADMIN_KEY)
    assert (code, answer["error"]) == (422, "invalid_request")


def test_admin_routes_refuse_api_keys_and_strangers(shared_proxy: StartProxy) -> None:
    # Refused before Redis is asked anything: no Redis needed.
    no_redis = "redis://127.0.0.1:1"
    proxy = shared_proxy(no_redis, tls=False, FERRY_ADMIN_API_KEYS=ADMIN_KEY)
    routes = [
        ("GET", "/api/v1/dead-letters", None),
        ("POST", "/api/v1/dead-letters/replay", b'{"all": true}'),
        ("POST", "/api/v1/dead-letters/purge", b'{"all": true}'),
    ]
    for method, path, body in routes:
        code, _, answer = proxy.request(method, path, body, JSON)
        assert (code, answer["error"]) == (403, "forbidden") and "FERRY_ADMIN_API_KEYS" in answer["detail"]
        for key in (None, "guess", ADMIN_KEY + "x"):
            code, headers, answer = proxy.request(method, path, body, JSON, key=key)
            assert (code, answer["error"], headers["www-authenticate"]) == (401, "unauthorized", "Bearer")
    # An admin key is no API key: it sends no messages.
    assert proxy.request("POST", "/api/v1/messages", b"{}", JSON, key=ADMIN_KEY)[0] == 401

    closed = shared_proxy(no_redis, tls=False)
    code, _, answer = closed.request("GET", "/api/v1/dead-letters")
    assert (code, answer["error"]) == (403, "admin_disabled") and "FERRY_ADMIN_API_KEYS" in answer["detail"]
    assert closed.request("GET", "/api/v1/dead-letters", key=None)[0] == 401


def test_admin_routes_answer_503_while_redis_is_down(shared_proxy: StartProxy) -> None:
    proxy = shared_proxy("redis://127.0.0.1:1", tls=False, FERRY_ADMIN_API_KEYS=ADMIN_KEY)
    code, headers, answer = proxy.request("GET", "/api/v1/dead-letters", key=ADMIN_KEY)
    assert (code, answer["error"], headers["retry-after"]) == (503, "redis_unavailable", "1")


# The guarantee


def test_replayed_dead_letters_are_delivered_once_the_sink_recovers(
    redis_url: str, start_sink: StartSink, run_worker: RunWorker, tmp_path: Path
) -> None:
    sink = start_sink("--fail-rate", "1", "--status", "422")
    ids = enqueue(redis_url, [b'{"order": %d}' % n for n in range(5)])
    run_worker(redis_url, sink.url)
    wait_until(lambda: len(dead_ids(redis_url)) == 5)
    assert sink.stats()["unique"] == 0

    sink.faults(fail_rate=0)
    replayed = ferry("dead", "replay", "--all", redis_url=redis_url, home=tmp_path / "home")
    assert (replayed.returncode, replayed.stdout.strip()) == (0, "replayed 5 dead letters")

    wait_until(lambda: sink.stats()["unique"] == 5)
    wait_until(lambda: all(status(redis_url, i).status == "delivered" for i in ids))
    assert all(status(redis_url, i).attempts == 1 for i in ids)  # attempts were reset by the replay
    assert dead_ids(redis_url) == [] and sink.stats()["duplicates"] == 0
