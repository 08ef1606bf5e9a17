"""FERRY_PARTITIONS=3 on a real three-master Redis Cluster (`redis-cli --cluster create`):
each partition on a master of its own, every message delivered, the workers' shares
fair, and a move from 1 to 3 partitions on a live system that strands nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable

from redis.crc import key_slot

from ferry.observe.checks_workers import jain_index
from ferry.queue.keys import Keys, partition_names

from tests.scaling.load import Load, delivered
from tests.scaling.servers import PASSWORD, ClusterSet, Node
from tests.support.inspect import scrape, scrape_text
from tests.support.processes import FerryProcess, Proxy, Sink, ferry_command, wait_until

NAMES = partition_names("message_queue", 3)


def processed(worker: FerryProcess) -> float:
    name = f'worker_messages_processed_total{{worker_id="{worker.env["WORKER_ID"]}"}}'
    return scrape(int(worker.env["WORKER_METRICS_PORT"])).get(name, 0.0)


def homes(cluster: ClusterSet) -> list[Node]:
    """The master that serves each partition's slot."""
    return [cluster.node_of_slot(key_slot(name.encode())) for name in NAMES]


def backlog(cluster: ClusterSet) -> list[int]:
    return [int(node.client(password=PASSWORD).llen(name)) for node, name in zip(homes(cluster), NAMES)]


def enqueued(cluster: ClusterSet) -> list[int]:
    """Each partition's `enqueued` counter, read on its own master."""
    return [
        int(node.client(password=PASSWORD).hget(Keys(queue=name).stats, "enqueued") or 0)
        for node, name in zip(homes(cluster), NAMES)
    ]


def test_three_partitions_land_on_three_masters_and_workers_share_them_fairly(
    cluster_set: ClusterSet,
    start_sink: Callable[..., Sink],
    start_proxy: Callable[..., Proxy],
    start_worker: Callable[..., FerryProcess],
) -> None:
    assert len({node.port for node in homes(cluster_set)}) == 3  # one master each
    sink = start_sink()
    url = cluster_set.url
    workers = [start_worker(url, sink.url, WORKER_ID=f"part-{i}", FERRY_PARTITIONS=3) for i in range(3)]
    proxy = start_proxy(url, FERRY_PARTITIONS=3)
    load = Load(proxy, "partitions", threads=3, interval_seconds=0.005)
    load.start()
    time.sleep(4.0)
    load.stop()

    assert not load.unexpected and not load.refusals, (load.unexpected[:5], load.refusals)
    answered = {answer.id for answer in load.answers}
    assert len(answered) >= 150
    wait_until(lambda: answered <= delivered(sink).keys(), timeout=30)
    counts = enqueued(cluster_set)
    assert sum(counts) == len(answered) and min(counts) >= len(answered) / 6, counts  # every master took a share
    assert backlog(cluster_set) == [0, 0, 0]

    shares = [processed(worker) for worker in workers]
    assert sum(shares) >= len(answered) and jain_index(shares) >= 0.8, shares

    # Status, from whichever partition holds the message; the metrics, per partition.
    for answer in load.answers[:: max(1, len(load.answers) // 10)]:
        status, _, body = proxy.request("GET", f"/api/v1/messages/{answer.id}")
        assert (status, body["status"]) == (200, "delivered")
    metrics = scrape_text(f"{proxy.base}/metrics", proxy.context())
    for partition in range(3):
        assert f'redis_queue_partition_size{{partition="{partition}"}} 0.0' in metrics
    assert "redis_queue_size 0.0" in metrics
    for worker in workers:
        assert worker.process is not None and worker.process.poll() is None, worker.log()

    done = subprocess.run(
        [ferry_command(), "verify", "--check-queue", "--json", "--sample-duration", "1", "--redis-url", url],
        capture_output=True, text=True, timeout=60,
    )
    assert done.stdout, done.stderr
    queue = json.loads(done.stdout)["queue"]
    assert done.returncode == 0 and queue["passed"], done.stdout + done.stderr
    masters = [place["master"] for place in queue["partitions"]]
    assert [place["name"] for place in queue["partitions"]] == list(NAMES) and len(set(masters)) == 3


def test_raising_the_partitions_of_a_live_system_strands_nothing(
    cluster_set: ClusterSet,
    start_sink: Callable[..., Sink],
    start_proxy: Callable[..., Proxy],
    start_worker: Callable[..., FerryProcess],
) -> None:
    url = cluster_set.url
    one = start_proxy(url)  # FERRY_PARTITIONS=1: today's layout
    before = [one.post(b'{"before": %d}' % n)[2]["id"] for n in range(40)]
    three = start_proxy(url, FERRY_PARTITIONS=3)
    after = [three.post(b'{"after": %d}' % n)[2]["id"] for n in range(60)]
    assert min(backlog(cluster_set)) > 0  # all three partitions hold messages now

    sink = start_sink()
    # Workers still configured for one partition: they find the others in the proxies' record.
    workers = [start_worker(url, sink.url, WORKER_ID=f"old-{i}") for i in range(2)]
    wait_until(lambda: set(before + after) <= delivered(sink).keys(), timeout=30)
    assert backlog(cluster_set) == [0, 0, 0]
    # Each, the one that started last too (the first may have drained all before it).
    wait_until(lambda: all("draining partitions that proxies added" in worker.log() for worker in workers))
    # Messages sent now, one to each partition, reach the idle workers waiting on all three.
    late = {three.post(b'{"late": %d}' % n)[2]["id"] for n in range(3)}
    wait_until(lambda: late <= delivered(sink).keys(), timeout=10)


def test_a_worker_killed_holding_messages_of_every_partition_loses_none(
    cluster_set: ClusterSet,
    start_sink: Callable[..., Sink],
    start_proxy: Callable[..., Proxy],
    start_worker: Callable[..., FerryProcess],
) -> None:
    url = cluster_set.url
    proxy = start_proxy(url, FERRY_PARTITIONS=3)
    sent = [proxy.post(b'{"n": %d}' % n)[2]["id"] for n in range(12)]
    assert min(backlog(cluster_set)) == 4
    sink = start_sink("--latency-ms", "3000")
    doomed = start_worker(url, sink.url, WORKER_ID="doomed", FERRY_PARTITIONS=3, WORKER_CONCURRENCY=12)
    wait_until(lambda: backlog(cluster_set) == [0, 0, 0])  # all twelve held, in three partitions' in-flight sets
    doomed.signal(signal.SIGKILL)
    sink.faults(latency_ms=0)
    start_worker(url, sink.url, WORKER_ID="rescuer", FERRY_PARTITIONS=3)
    wait_until(lambda: set(sent) <= delivered(sink).keys(), timeout=30)

    def settled(message_id: str) -> tuple[str, int]:
        _, _, body = proxy.request("GET", f"/api/v1/messages/{message_id}")
        return body["status"], body["attempts"]

    # Delivered by the rescuer (the sink may have stored the doomed worker's sends too):
    # its reaper took all twelve back, in each partition, for a second attempt.
    wait_until(lambda: all(settled(message_id) == ("delivered", 2) for message_id in sent), timeout=30)
