"""The worker against a real Redis/Valkey and a real sink over HTTPS: the delivery guarantees.

Most tests run ferry's Worker in this process (`run_worker`); those about the
process itself run `ferry worker` (`start_worker`): SIGKILL, SIGTERM, exit codes
and the server checks it makes before it starts.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable

import pytest
from standardwebhooks import Webhook

from ferry.queue.keys import Keys
from ferry.queue.message import new_message_id, now_ms
from tests.support.certs import CertFiles
from tests.support.inspect import (
    client,
    dead_ids,
    enqueue,
    in_flight,
    queue_length,
    registered_workers,
    scrape,
    status,
)
from tests.support.processes import FerryProcess, Sink, bare_env, ferry_command, wait_until
from tests.support.servers import RedisProcess
from tests.support.worker import InProcessWorker

StartSink = Callable[..., Sink]
StartWorker = Callable[..., FerryProcess]
RunWorker = Callable[..., InProcessWorker]


def unique(sink: Sink, expected: int) -> Callable[[], bool]:
    return lambda: sink.stats()["unique"] >= expected


def delivering(worker: FerryProcess, count: int) -> Callable[[], bool]:
    """The worker reports `count` deliveries in progress (worker_active_tasks on its /metrics)."""
    port = int(worker.env["WORKER_METRICS_PORT"])
    name = f'worker_active_tasks{{worker_id="{worker.env["WORKER_ID"]}"}}'

    def check() -> bool:
        try:
            return scrape(port).get(name) == count
        except OSError:  # not serving metrics yet
            return False

    return check


def test_delivers_end_to_end_over_https_keeping_body_and_headers(
    redis_url: str, start_sink: StartSink, run_worker: RunWorker
) -> None:
    sink = start_sink()
    bodies = [b'{"order": %d}' % n for n in range(20)] + [bytes(range(256))]
    ids = enqueue(redis_url, bodies[:20]) + enqueue(redis_url, bodies[20:], "application/octet-stream")
    run_worker(redis_url, sink.url)

    wait_until(unique(sink, 21))
    stored = sink.message(ids[-1])
    assert (stored.status, stored.body) == (200, bytes(range(256)))
    assert stored.headers["Content-Type"] == "application/octet-stream"
    assert stored.headers["X-Sink-First-Attempt"] == "1"
    assert sink.stats()["duplicates"] == 0
    assert queue_length(redis_url) == 0
    done = status(redis_url, ids[0])
    assert done.status == "delivered" and done.attempts == 1


def test_retries_until_the_main_server_recovers(
    redis_url: str, start_sink: StartSink, run_worker: RunWorker
) -> None:
    sink = start_sink("--fail-rate", "1", "--status", "503")
    ids = enqueue(redis_url, [b"a", b"b", b"c"])
    run_worker(redis_url, sink.url)

    wait_until(lambda: sink.stats()["failed"] >= 9)
    assert sink.stats()["unique"] == 0
    retrying = status(redis_url, ids[0])
    assert retrying.status in ("retrying", "queued", "delivering") and "503" in (retrying.last_error or "")

    sink.faults(fail_rate=0)
    wait_until(unique(sink, 3))
    assert all(status(redis_url, i).attempts >= 3 for i in ids)
    assert dead_ids(redis_url) == []


def test_permanent_4xx_is_dead_lettered_at_once(
    redis_url: str, start_sink: StartSink, run_worker: RunWorker
) -> None:
    sink = start_sink("--fail-rate", "1", "--status", "422")
    ids = enqueue(redis_url, [b"x", b"y"])
    run_worker(redis_url, sink.url)

    wait_until(lambda: len(dead_ids(redis_url)) == 2)
    for message_id in ids:
        dead = status(redis_url, message_id)
        assert dead.status == "dead" and dead.attempts == 1 and "HTTP 422" in (dead.last_error or "")
    assert sink.stats()["failed"] == 2  # no second attempt


def test_dead_lettered_after_the_last_attempt(
    redis_url: str, start_sink: StartSink, run_worker: RunWorker
) -> None:
    sink = start_sink("--fail-rate", "1", "--status", "500")
    [message_id] = enqueue(redis_url, [b"x"])
    run_worker(redis_url, sink.url, WORKER_MAX_ATTEMPTS=3, WORKER_RETRY_INTERVAL=0.05)

    wait_until(lambda: dead_ids(redis_url) == [message_id])
    dead = status(redis_url, message_id)
    assert dead.attempts == 3 and "HTTP 500" in (dead.last_error or "")
    assert sink.stats()["failed"] == 3


def test_retry_after_of_the_main_server_is_honoured(
    redis_url: str, start_sink: StartSink, run_worker: RunWorker
) -> None:
    sink = start_sink("--fail-rate", "1", "--status", "429", "--retry-after", "3")
    [message_id] = enqueue(redis_url, [b"x"])
    run_worker(redis_url, sink.url, WORKER_RETRY_INTERVAL=0.05)

    waiting = wait_until(lambda: (s := status(redis_url, message_id)).status == "retrying" and s)
    assert waiting.next_attempt_at_ms is not None
    assert 2900 <= waiting.next_attempt_at_ms - waiting.updated_at_ms <= 3100
    time.sleep(1.5)
    assert sink.stats()["failed"] == 1  # the 0.05 s retry interval did not apply
    sink.faults(fail_rate=0)
    wait_until(unique(sink, 1), timeout=10)


def test_sigkill_mid_delivery_loses_nothing(
    redis_url: str, start_sink: StartSink, start_worker: StartWorker, run_worker: RunWorker
) -> None:
    sink = start_sink("--latency-ms", "2000")
    ids = enqueue(redis_url, [b"m%d" % n for n in range(10)])
    # A one-second lease: the rescuer need not wait out the usual two.
    victim = start_worker(redis_url, sink.url, WORKER_ID="victim", WORKER_CONCURRENCY=4, FERRY_LEASE_SECONDS=1)
    wait_until(delivering(victim, 4))
    victim.kill()
    held = in_flight(redis_url, "victim")
    assert len(held) >= 4  # the four it was sending, and any it had claimed ahead

    sink.faults(latency_ms=0)
    run_worker(redis_url, sink.url, WORKER_ID="rescuer", FERRY_LEASE_SECONDS=1)
    # The sink may have stored the ones the victim was sending when it died; they
    # are delivered again all the same (at least once), once its lease runs out.
    wait_until(lambda: all(status(redis_url, i).status == "delivered" for i in ids), timeout=30)
    assert sink.stats()["unique"] == 10
    assert all(status(redis_url, i).returns == 1 for i in held)
    assert "victim" not in registered_workers(redis_url)


def test_poison_pill_that_keeps_killing_workers_is_dead_lettered(
    redis_url: str, start_sink: StartSink, start_worker: StartWorker, run_worker: RunWorker
) -> None:
    sink = start_sink("--latency-ms", "60000")  # every worker dies while delivering it
    [pill] = enqueue(redis_url, [b"poison"])
    for death in (1, 2):  # one-second leases: each death is noticed sooner than with the usual two
        victim = start_worker(
            redis_url, sink.url, WORKER_ID=f"victim-{death}", FERRY_MAX_RETURNS=1, FERRY_LEASE_SECONDS=1
        )
        wait_until(delivering(victim, 1), timeout=30)
        victim.kill()

    run_worker(redis_url, sink.url, WORKER_ID="survivor", FERRY_MAX_RETURNS=1, FERRY_LEASE_SECONDS=1)
    wait_until(lambda: dead_ids(redis_url) == [pill], timeout=30)
    dead = status(redis_url, pill)
    assert dead.returns == 2 and "poison pill" in (dead.last_error or "")


@pytest.mark.parametrize("client", ["pyreqwest", "aiohttp"])
def test_a_delivery_that_times_out_is_retried(
    client: str, redis_url: str, start_sink: StartSink, run_worker: RunWorker
) -> None:
    sink = start_sink("--latency-ms", "3000")
    [message_id] = enqueue(redis_url, [b"slow"])
    run_worker(redis_url, sink.url, FERRY_DELIVERY_TIMEOUT_SECONDS=0.3, FERRY_HTTP_CLIENT=client)

    waiting = wait_until(lambda: (s := status(redis_url, message_id)).attempts >= 2 and s)
    assert "timed out" in (waiting.last_error or "")
    sink.faults(latency_ms=0)
    wait_until(lambda: status(redis_url, message_id).status == "delivered")


def test_sigterm_lets_in_flight_deliveries_finish(
    redis_url: str, start_sink: StartSink, start_worker: StartWorker
) -> None:
    sink = start_sink("--latency-ms", "1500")
    enqueue(redis_url, [b"m%d" % n for n in range(6)])
    worker = start_worker(redis_url, sink.url, WORKER_ID="draining", WORKER_CONCURRENCY=4)
    wait_until(delivering(worker, 4))

    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
    assert sink.stats()["unique"] == 4  # the four in flight were finished, not cut short
    assert queue_length(redis_url) == 2  # the rest: never taken, or claimed ahead and given back
    assert in_flight(redis_url, "draining") == []
    assert "draining" not in registered_workers(redis_url)


def test_sigterm_under_load_stops_fetching_and_accounts_for_every_message(
    redis_url: str, start_sink: StartSink, start_worker: StartWorker
) -> None:
    sink = start_sink("--latency-ms", "2")
    enqueue(redis_url, [b"m%d" % n for n in range(3000)])
    worker = start_worker(redis_url, sink.url, WORKER_ID="busy", WORKER_CONCURRENCY=16)
    wait_until(unique(sink, 200))

    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
    delivered = sink.stats()["unique"]
    assert delivered < 3000  # it stopped fetching rather than emptying the queue
    assert delivered + queue_length(redis_url) == 3000
    assert in_flight(redis_url, "busy") == []


@pytest.mark.parametrize("client", ["pyreqwest", "aiohttp"])
def test_sigterm_past_the_grace_period_gives_messages_back(
    client: str, redis_url: str, start_sink: StartSink, start_worker: StartWorker
) -> None:
    sink = start_sink("--latency-ms", "5000")
    ids = enqueue(redis_url, [b"m%d" % n for n in range(4)])
    worker = start_worker(
        redis_url, sink.url, WORKER_ID="hasty", WORKER_CONCURRENCY=4, FERRY_SHUTDOWN_GRACE_SECONDS=0.5,
        FERRY_HTTP_CLIENT=client,
    )
    wait_until(delivering(worker, 4))

    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 0
    assert queue_length(redis_url) == 4
    assert all(status(redis_url, i).status == "queued" for i in ids)


@pytest.mark.parametrize("client", ["pyreqwest", "aiohttp"])
def test_a_second_sigterm_cuts_the_grace_period_short_and_gives_messages_back(
    client: str, redis_url: str, start_sink: StartSink, start_worker: StartWorker
) -> None:
    sink = start_sink("--latency-ms", "20000")
    enqueue(redis_url, [b"slow-1", b"slow-2"])
    worker = start_worker(redis_url, sink.url, WORKER_ID="impatient", WORKER_CONCURRENCY=2, FERRY_HTTP_CLIENT=client)
    wait_until(delivering(worker, 2))

    worker.signal(signal.SIGTERM)
    time.sleep(0.5)
    assert worker.process is not None and worker.process.poll() is None  # still draining
    stopped_at = time.monotonic()
    worker.signal(signal.SIGTERM)  # Ctrl-C twice: stop now
    assert worker.wait(timeout=10) == 0
    assert time.monotonic() - stopped_at < 5
    assert queue_length(redis_url) == 2 and in_flight(redis_url, "impatient") == []


def test_two_workers_share_a_thousand_messages(
    redis_url: str, start_sink: StartSink, run_worker: RunWorker
) -> None:
    sink = start_sink("--latency-ms", "2")
    workers = [run_worker(redis_url, sink.url, WORKER_ID=name) for name in ("w1", "w2")]
    wait_until(lambda: registered_workers(redis_url) == {"w1", "w2"})

    enqueue(redis_url, [b'{"n": %d}' % n for n in range(1000)])
    wait_until(unique(sink, 1000), timeout=60)
    # A worker counts a message after its ack, a moment after the sink has it.
    wait_until(lambda: sum(worker.sample("worker_messages_processed_total") for worker in workers) >= 1000)
    processed = [worker.sample("worker_messages_processed_total") for worker in workers]
    assert sum(processed) == 1000
    assert min(processed) >= 300, processed
    for worker, count in zip(workers, processed):
        assert worker.sample("worker_delivery_duration_seconds_count") == count
        assert worker.sample("worker_message_latency_seconds_count") == count
        assert worker.sample("worker_active_tasks") == 0 and worker.sample("worker_redis_up") == 1


def test_a_worker_on_a_slow_main_server_leaves_the_backlog_to_others(
    redis_url: str, start_sink: StartSink, run_worker: RunWorker
) -> None:
    # Claimed ahead is what the slots finish in a few milliseconds: at 300 ms a delivery,
    # one slot's worth; the rest of the backlog stays queued for any other worker.
    sink = start_sink("--latency-ms", "300")
    enqueue(redis_url, [b'{"n": %d}' % n for n in range(100)])
    run_worker(redis_url, sink.url, WORKER_ID="w1", WORKER_CONCURRENCY=4)
    wait_until(unique(sink, 8), timeout=10)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert len(in_flight(redis_url, "w1")) <= 8
        time.sleep(0.05)
    assert queue_length(redis_url) >= 100 - 8 - sink.stats()["unique"]


def test_a_retry_another_worker_left_is_delivered_by_an_idle_worker(
    redis_url: str, start_sink: StartSink, run_worker: RunWorker
) -> None:
    # An idle worker's maintenance sleeps up to IDLE_PROMOTE_SECONDS (5 s; here less: the suite's
    # short lease has it reap more often) when no retry is due sooner; a retry that a worker
    # which then stopped scheduled is still moved.
    sink = start_sink()
    run_worker(redis_url, sink.url, WORKER_ID="idle")
    time.sleep(1.0)  # idle: its maintenance has looked and found no retry scheduled
    # What fail.lua leaves when a worker schedules a retry and then stops (written here by
    # hand: through the queue, the idle worker would claim the message first).
    message_id, keys, now = new_message_id(), Keys(), now_ms()
    redis = client(redis_url)
    redis.hset(keys.message(message_id), mapping={
        "body": b'{"left": 1}', "content_type": "application/json", "status": "retrying", "attempts": 1,
        "returns": 0, "created_at": now, "updated_at": now, "next_attempt_at": now + 1000, "last_error": "HTTP 503",
    })
    redis.zadd(keys.retry, {message_id: now + 1000})
    wait_until(unique(sink, 1), timeout=5 + 1 + 3)
    assert status(redis_url, message_id).status == "delivered"


def test_redis_restart_mid_run_loses_nothing(
    own_redis: RedisProcess, start_sink: StartSink, run_worker: RunWorker
) -> None:
    sink = start_sink("--latency-ms", "5")
    enqueue(own_redis.url, [b"m%d" % n for n in range(600)])
    workers = [run_worker(own_redis.url, sink.url, WORKER_ID=f"w{n}") for n in (1, 2)]
    wait_until(unique(sink, 100), timeout=30)

    own_redis.kill()  # appendfsync always: every acknowledged write is on disk
    time.sleep(1.5)
    assert all(worker.running for worker in workers)
    own_redis.start()

    wait_until(unique(sink, 600), timeout=60)
    assert all(worker.running for worker in workers)
    logs = workers[0].log()
    assert "redis unavailable" in logs and "redis reachable again" in logs
    # It backed off instead of spinning: one warning per outage, not one per try.
    assert logs.count("redis unavailable") <= 3


def test_worker_started_before_redis_waits_for_it(
    own_redis: RedisProcess, start_sink: StartSink, start_worker: StartWorker
) -> None:
    sink = start_sink()
    own_redis.kill()
    worker = start_worker(own_redis.url, sink.url)
    time.sleep(2)
    assert worker.process and worker.process.poll() is None
    own_redis.start()
    enqueue(own_redis.url, [b"late"])
    wait_until(unique(sink, 1), timeout=20)


@pytest.mark.parametrize("client_cert", ["none", "stranger"])
def test_refused_client_certificate_is_retried_never_dropped(
    client_cert: str, redis_url: str, certs: CertFiles, start_sink: StartSink, run_worker: RunWorker
) -> None:
    sink = start_sink("--client-ca", str(certs.ca))
    [message_id] = enqueue(redis_url, [b"secret"])
    env = {}
    if client_cert == "stranger":
        env = {"MAIN_SERVER_CERT_FILE": str(certs.other_client_cert), "MAIN_SERVER_KEY_FILE": str(certs.other_client_key)}
    refused = run_worker(redis_url, sink.url, WORKER_ID="refused", **env)

    wait_until(lambda: status(redis_url, message_id).attempts >= 3)
    assert sink.stats()["received"] == 0 and dead_ids(redis_url) == []
    refused.stop()

    run_worker(
        redis_url,
        sink.url,
        WORKER_ID="trusted",
        MAIN_SERVER_CERT_FILE=str(certs.client_cert),
        MAIN_SERVER_KEY_FILE=str(certs.client_key),
    )
    wait_until(unique(sink, 1))
    assert status(redis_url, message_id).status == "delivered"


def test_signed_deliveries_verify_with_standardwebhooks(
    redis_url: str, start_sink: StartSink, run_worker: RunWorker
) -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    sink = start_sink()
    body = b'{"event": "paid", "amount": 12}'
    [message_id] = enqueue(redis_url, [body])
    run_worker(redis_url, sink.url, FERRY_SIGNING_SECRET=secret)

    wait_until(unique(sink, 1))
    stored = sink.message(message_id)
    signed = json.loads(stored.headers["X-Sink-Signature-Headers"])
    assert signed["webhook-id"] == message_id
    Webhook(secret).verify(stored.body, signed)  # raises if the signature is wrong
    with pytest.raises(Exception):
        Webhook(secret).verify(stored.body + b" ", signed)


@pytest.mark.both_servers
def test_evicting_redis_is_refused_unless_overridden(
    own_redis: RedisProcess, start_sink: StartSink, start_worker: StartWorker
) -> None:
    own_redis.client().config_set("maxmemory-policy", "allkeys-lru")
    sink = start_sink()
    refused = start_worker(own_redis.url, sink.url, WORKER_ID="careful")
    assert refused.wait(timeout=20) == 2
    assert "maxmemory-policy is allkeys-lru" in refused.log()

    allowed = start_worker(own_redis.url, sink.url, WORKER_ID="bold", FERRY_ALLOW_EVICTING_REDIS="true")
    wait_until(lambda: "worker started" in allowed.log())
    assert "maxmemory-policy is allkeys-lru" in allowed.log()  # still warned
    assert "keeps nothing on disk" not in allowed.log()  # the test server has its AOF


@pytest.mark.both_servers
def test_redis_without_persistence_gets_a_warning(
    own_redis: RedisProcess, start_sink: StartSink, start_worker: StartWorker
) -> None:
    own_redis.client().config_set("appendonly", "no")
    worker = start_worker(own_redis.url, start_sink().url)
    wait_until(lambda: "worker started" in worker.log())
    assert "keeps nothing on disk" in worker.log()


def test_bad_setting_stops_the_worker_with_one_clear_line(tmp_path: object) -> None:
    result = subprocess.run(
        [ferry_command(), "worker"],
        env=bare_env(WORKER_CONCURRENCY="many", MAIN_SERVER_URL="http://x"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "ferry: invalid setting WORKER_CONCURRENCY: Input should be a valid integer, "
        "unable to parse string as an integer (got 'many')"
    ]


def test_messages_claimed_by_a_lost_reply_are_delivered_while_the_worker_lives(
    redis_url: str, start_sink: StartSink, run_worker: RunWorker
) -> None:
    """Redis ran a claim, then died (or the connection dropped) before its reply came:
    the ids sit in the live worker's in-flight list, and it must not hold them for ever."""
    sink = start_sink()
    # A one-second lease: the worker looks for strays once a lease period.
    worker = run_worker(redis_url, sink.url, WORKER_ID="w1", FERRY_LEASE_SECONDS=1)
    wait_until(lambda: "worker started" in worker.log())
    keys, now = Keys(), now_ms()
    strays = [new_message_id() for _ in range(3)]
    with client(redis_url).pipeline(transaction=True) as pipe:  # what such a claim leaves behind
        for number, message_id in enumerate(strays):
            pipe.hset(keys.message(message_id), mapping={
                "body": b'{"stray": %d}' % number, "content_type": "application/json", "status": "delivering",
                "attempts": 1, "returns": 0, "created_at": now, "updated_at": now, "worker": "w1",
            })
            pipe.zadd(keys.in_flight("w1"), {message_id: now})
        pipe.execute()
    wait_until(unique(sink, 3), timeout=20)
    assert all(status(redis_url, message_id).status == "delivered" for message_id in strays)
    wait_until(lambda: in_flight(redis_url, "w1") == [])
    assert "gave back messages claimed with a lost reply" in worker.log()
    assert worker.running
