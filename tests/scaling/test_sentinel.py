"""Sentinel: proxies, workers and commands follow the master through a failover.

One Sentinel set for the module (tests/scaling/servers.py): a master, two replicas
and three sentinels on loopback, all Valkey, with a master called down after
500 ms of silence. The tests run in file order: the graceful failover first, then
the SIGKILL under load on whichever master that left.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from ferry.queue import Queue
from ferry.queue.connection import connect
from ferry.queue.errors import WritesRefused
from ferry.queue.keys import Keys
from ferry.queue.message import NewMessage, new_message_id
from tests.scaling.load import Load, judge_failover, load_until_resumed, start_loads, wait_for_renewed_leases
from tests.scaling.servers import PASSWORD, SERVICE, SentinelSet
from tests.support.processes import FerryProcess, Proxy, Sink, bare_env, ferry_command, wait_until

LONG_LEASE_SECONDS = 10  # well over a failover here: such a lease must never lapse in one
SHORT_LEASE_SECONDS = 1  # under a failover: such a lease may lapse, and fencing must make that harmless
LOAD_BEFORE_KILL_SECONDS = 2.0


def _message(body: bytes = b"{}") -> NewMessage:
    return NewMessage(new_message_id(), body, "application/json", "", "", "test")


def _errorstat(node_client: Any, code: str) -> int:
    stats = node_client.info("errorstats")
    return int(stats.get(f"errorstat_{code}", {}).get("count", 0))


def test_a_client_left_on_a_demoted_master_reconnects_to_the_new_one(sentinel_set: SentinelSet) -> None:
    """SENTINEL FAILOVER leaves the old master up; when it is made a replica, a client
    still connected to it gets READONLY. ferry's client asks the sentinels again and
    writes on the new master, loading its script there (a URL naming the old server
    itself is refused instead)."""

    # The sentinel told to fail over leads it, and names the old master until the failover
    # ends, shortly before it makes the old master a replica and closes its clients. The
    # others name the new master earlier: the client asks only them, and the test demotes
    # the old master itself, as that sentinel would, before it does.
    leader, *followers = sentinel_set.sentinels

    async def run() -> None:
        through_sentinels = connect(sentinel_set.url_of(followers))
        old = sentinel_set.master()
        direct = connect(f"redis://:{PASSWORD}@127.0.0.1:{old.port}")
        try:
            queue = Queue(through_sentinels)
            await queue.enqueue([_message()])  # the pool now holds a connection to `old`
            old.client(password=PASSWORD).execute_command("WAIT", 2, 2000)
            leader.client().execute_command("SENTINEL", "FAILOVER", SERVICE)
            new = sentinel_set.wait_for_new_master(old, sentinels=followers)
            old.client(password=PASSWORD).execute_command("REPLICAOF", "127.0.0.1", str(new.port))
            refused_before = _errorstat(old.client(password=PASSWORD), "READONLY")

            message = _message(b'{"after": "failover"}')
            assert (await queue.enqueue([message]))[0].outcome == "queued"
            assert new.client(password=PASSWORD).hget(f"{{message_queue}}:msg:{message.id}", "body") == message.body
            assert _errorstat(old.client(password=PASSWORD), "READONLY") > refused_before, (
                "the client never met the demoted master: this test did not test READONLY"
            )
            # A promoted replica has no script cached: NOSCRIPT, and the client loaded it there.
            assert _errorstat(new.client(password=PASSWORD), "NOSCRIPT") >= 1
            assert new.client(password=PASSWORD).script_exists(queue._enqueue.sha) == [True]
            with pytest.raises(WritesRefused, match="READONLY"):
                await Queue(direct).enqueue([_message()])
        finally:
            await through_sentinels.aclose()
            await direct.aclose()

    asyncio.run(run())


def test_master_sigkilled_under_load_strict_replicas_lose_nothing_and_normal_mode_counts_its_loss(
    sentinel_set: SentinelSet,
    start_sink: Callable[..., Sink],
    start_proxy: Callable[..., Proxy],
    start_worker: Callable[..., FerryProcess],
) -> None:
    """A steady load through two proxies (strict with FERRY_STRICT_REPLICAS=1, and normal),
    three workers and a sink; the master is SIGKILLed, the sentinels promote a replica.

    Every message the strict proxy answered 202 is delivered. What the normal proxy
    answered and the old master had not yet sent to a replica is lost: the test
    counts it, and checks it was answered in the last moment before the kill. Both
    proxies and the deliveries carry on within a bound the test measures, well
    under the workers' lease: leases of 10 s never lapse (no worker is fenced off or
    reaped), and a worker whose 1 s lease lapses in the failover loses nothing either.
    """
    sink = start_sink()
    url = sentinel_set.url
    workers = [
        start_worker(url, sink.url, WORKER_ID="long-1", FERRY_LEASE_SECONDS=LONG_LEASE_SECONDS),
        start_worker(url, sink.url, WORKER_ID="long-2", FERRY_LEASE_SECONDS=LONG_LEASE_SECONDS),
        start_worker(url, sink.url, WORKER_ID="short", FERRY_LEASE_SECONDS=SHORT_LEASE_SECONDS),
    ]
    strict = start_proxy(url, FERRY_DURABILITY="strict", FERRY_STRICT_REPLICAS=1)
    normal = start_proxy(url)
    loads = start_loads(strict, normal, LOAD_BEFORE_KILL_SECONDS)

    old = sentinel_set.kill_master()
    killed_at = time.time()
    new = sentinel_set.wait_for_new_master(old)
    promoted_after = time.time() - killed_at
    stopped_at = load_until_resumed(loads, sink, killed_at)
    master = new.client(password=PASSWORD)
    failover = judge_failover(loads, sink, master, killed_at, stopped_at)
    print(
        f"\nfailover: promoted after {promoted_after:.2f} s; strict proxy 202 again after "
        f"{failover.resumed['strict']:.2f} s, normal after {failover.resumed['normal']:.2f} s; longest delivery "
        f"gap {failover.delivery_gap:.2f} s; strict {failover.strict_answered} answered, 0 lost; normal "
        f"{failover.normal_answered} answered, {len(failover.lost)} lost; refusals {loads['strict'].refusals} / "
        f"{loads['normal'].refusals}; the 1 s-lease worker "
        f"{'was fenced off and rejoined' if 'fenced off' in workers[2].log() else 'kept its lease'}"
    )
    # The bounds: from the kill to each proxy's first 202 after it, and the longest
    # time without a new delivery at the sink around it.
    bound = LONG_LEASE_SECONDS / 2
    assert max(*failover.resumed.values(), failover.delivery_gap) < bound, failover

    logs = {worker.args[0] + ":" + worker.env["WORKER_ID"]: worker.log() for worker in workers}
    logs |= {"strict proxy": strict.log(), "normal proxy": normal.log()}
    for name, text in logs.items():
        assert PASSWORD not in text, f"{name} logged the Redis password"
    wait_for_renewed_leases(master, Keys(), workers[:2], killed_at, LONG_LEASE_SECONDS)
    for worker in workers[:2]:
        assert "fenced off" not in worker.log(), f"{worker.env['WORKER_ID']}: a long lease lapsed in the failover"
    for worker in workers:
        assert worker.process is not None and worker.process.poll() is None, worker.log()

    # Every command finds the master through the sentinels too.
    listed = subprocess.run(
        [ferry_command(), "dead", "list"], env=bare_env(REDIS_URL=url), capture_output=True, text=True, timeout=30
    )
    assert listed.returncode == 0, listed.stderr
    assert PASSWORD not in listed.stdout + listed.stderr


def test_fewer_replicas_than_strict_replicas_answer_503_never_202(
    sentinel_set: SentinelSet, start_proxy: Callable[..., Proxy]
) -> None:
    """One replica more than the master has: no fsync by that many can be confirmed, so
    the proxy answers the strict failure's 503, not a weaker 202, and said so at start."""
    master = sentinel_set.master().client(password=PASSWORD)
    replicas = int(master.info("replication")["connected_slaves"])
    proxy = start_proxy(sentinel_set.url, FERRY_DURABILITY="strict", FERRY_STRICT_REPLICAS=replicas + 1)
    warning = f"FERRY_STRICT_REPLICAS={replicas + 1} but the master has {replicas} connected replica"
    assert warning in proxy.log()
    status, headers, body = proxy.post(b'{"n": 1}')
    assert status == 503, body
    assert body["error"] == "redis_unavailable" and "retry-after" in headers
    assert f"fsynced by {replicas} of {replicas + 1} replicas" in proxy.log()
