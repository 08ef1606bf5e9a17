"""`ferry workers start` in the mode Windows uses, on Linux (FERRY_PORTABLE_PROCESS_CONTROL=true):
stop handlers through signal.signal, scaling only through the Redis control channel, and
children that watch their supervisor instead of PR_SET_PDEATHSIG."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from ferry.processes.control import NoSuchPool, PoolState, Request, choose_pool

from tests.support.inspect import client, registered_workers
from tests.support.processes import FerryProcess, Sink, ferry_command, wait_until
from tests.support.servers import free_port_range


def scale(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ferry_command(), "workers", "scale", *args, "--timeout", "30"],
        env={**os.environ, "REDIS_URL": redis_url}, capture_output=True, text=True, timeout=60,
    )


def portable_pool(redis_url: str, sink: Sink, log_path: Path) -> FerryProcess:
    assert sink.certs is not None
    supervisor = FerryProcess(
        ["workers", "start", "--num-workers", "1", "--base-metrics-port", str(free_port_range(2))],
        {"REDIS_URL": redis_url, "MAIN_SERVER_URL": sink.url, "MAIN_SERVER_CA_FILE": str(sink.certs.ca),
         "FERRY_LEASE_SECONDS": "2", "LOG_LEVEL": "INFO", "FERRY_PORTABLE_PROCESS_CONTROL": "true"},
        log_path,
    )
    supervisor.start()
    return supervisor


def test_portable_mode_scales_through_redis_and_its_workers_stop_when_the_supervisor_is_sigkilled(
    redis_url: str, start_sink: Callable[..., Sink], tmp_path: Path
) -> None:
    supervisor = portable_pool(redis_url, start_sink(), tmp_path / "workers.log")
    try:
        wait_until(lambda: registered_workers(redis_url) == {"worker-1"}, timeout=30)
        pool = f"{os.uname().nodename}:{supervisor.pid}"

        up = scale(redis_url, "+1")
        assert up.returncode == 0 and up.stdout.strip() == f"pool {pool}: 1 -> 2 workers", up.stdout + up.stderr
        wait_until(lambda: registered_workers(redis_url) == {"worker-1", "worker-2"}, timeout=30)
        down = scale(redis_url, "--to", "1", "--pool", pool)
        assert down.returncode == 0 and down.stdout.strip() == f"pool {pool}: 2 -> 1 workers", down.stdout + down.stderr
        wait_until(lambda: registered_workers(redis_url) == {"worker-1"}, timeout=30)
        wrong = scale(redis_url, "+1", "--pool", "elsewhere:1")
        assert wrong.returncode == 2 and wrong.stderr.startswith("ferry: no running pool elsewhere:1"), wrong.stderr

        worker = psutil.Process(supervisor.pid).children()[0]
        supervisor.kill()  # SIGKILL: no handler runs, and no PR_SET_PDEATHSIG was asked for in this mode
        wait_until(lambda: not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE, timeout=30)
        log = supervisor.log()
        assert "supervisor gone, stopping" in log
        assert re.search(r'"event": "worker stopped".*"worker_id": "worker-1"', log), log  # drained, not killed
    finally:
        supervisor.kill()


def test_portable_mode_drains_the_pool_on_ctrl_c_without_the_loops_signal_handlers(
    redis_url: str, start_sink: Callable[..., Sink], tmp_path: Path
) -> None:
    supervisor = portable_pool(redis_url, start_sink(), tmp_path / "workers.log")
    try:
        wait_until(lambda: registered_workers(redis_url) == {"worker-1"}, timeout=30)
        supervisor.signal(signal.SIGINT)  # through signal.signal and call_soon_threadsafe, as on Windows
        assert supervisor.wait(timeout=60) == 0
        assert registered_workers(redis_url) == set()  # the worker signed off: a drain, not a kill
        assert not client(redis_url).sismember("{message_queue}:pools", f"{os.uname().nodename}:{supervisor.pid}")
    finally:
        supervisor.kill()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "ferry: give either a step (+1, -1) or --to N"),
        (["+1", "--to", "3"], "ferry: give either a step (+1, -1) or --to N"),
        (["two"], "ferry: the step must be +N or -N, not 'two'"),
        (["-x1"], "ferry: the step must be +N or -N, not '-x1'"),
    ],
)
def test_workers_scale_refuses_a_bad_request_in_one_line(args: list[str], message: str) -> None:
    done = subprocess.run([ferry_command(), "workers", "scale", *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "REDIS_URL": "redis://127.0.0.1:1"})
    assert (done.returncode, done.stderr.strip()) == (2, message)


def test_a_request_targets_the_pools_wanted_count_and_bad_ones_are_refused() -> None:
    assert Request(step=-1).target(1) == 0 and Request(step=-1).target(0) == 0 and Request(step=2).target(3) == 5
    assert Request.decode(Request(to=4).encode()) == Request(to=4)
    assert Request.decode(Request(step=-1).encode()) == Request(step=-1)
    for raw in (b"", b"[]", b'{"to": -1}', b'{"to": "3"}', b'{"go": 1}'):
        with pytest.raises(ValueError):
            Request.decode(raw)


def test_the_pool_is_the_one_named_or_the_only_one_on_this_host() -> None:
    here, there = socket.gethostname(), "elsewhere"
    pools = [PoolState(f"{here}:10", here, 1, 1, 0), PoolState(f"{there}:11", there, 2, 2, 0)]
    assert choose_pool(pools, None).pool == f"{here}:10"
    assert choose_pool(pools, f"{there}:11").pool == f"{there}:11"
    assert choose_pool(pools[1:], None).pool == f"{there}:11"  # the only one anywhere
    with pytest.raises(NoSuchPool, match="several pools run"):
        choose_pool([*pools, PoolState(f"{here}:12", here, 1, 1, 0)], None)
    with pytest.raises(NoSuchPool, match="no running pool of workers"):
        choose_pool([], None)
