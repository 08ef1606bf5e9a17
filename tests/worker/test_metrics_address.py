"""A worker's /metrics listens on loopback unless FERRY_METRICS_HOST says otherwise:
its counters are nobody else's business by default. Read from the kernel's socket
table, so no packet leaves loopback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.support.processes import FerryProcess, Sink, wait_until

StartSink = Callable[..., Sink]
StartWorker = Callable[..., FerryProcess]


def listening_addresses(port: int) -> set[str]:
    """Local addresses (IPv4, dotted) of the sockets listening on `port`."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_worker_metrics_listen_on_loopback_by_default_and_where_told(
    redis_url: str, start_sink: StartSink, start_worker: StartWorker
) -> None:
    sink = start_sink()
    default = start_worker(redis_url, sink.url)
    everywhere = start_worker(redis_url, sink.url, FERRY_METRICS_HOST="0.0.0.0")
    for worker, expected in ((default, {"127.0.0.1"}), (everywhere, {"0.0.0.0"})):
        port = int(worker.env["WORKER_METRICS_PORT"])
        assert wait_until(lambda port=port: listening_addresses(port), timeout=30) == expected
