"""`ferry workers start` in the mode Windows uses, on Linux (FERRY_PORTABLE_PROCESS_CONTROL=true):
stop handlers through signal.signal, scaling only through the Redis control channel, and
children that watch their supervisor instead of PR_SET_PDEATHSIG."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import psutil

from tests.support.inspect import registered_workers
from tests.support.processes import FerryProcess, Sink, ferry_command, wait_until
from tests.support.servers import free_port_range


def scale(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ferry_command(), "workers", "scale", *args, "--timeout", "30"],
        env={**os.environ, "REDIS_URL": redis_url}, capture_output=True, text=True, timeout=60,
    )


def test_portable_mode_scales_through_redis_and_its_workers_stop_when_the_supervisor_is_sigkilled(
    redis_url: str, start_sink: Callable[..., Sink], tmp_path: Path
) -> None:
    sink = start_sink()
    assert sink.certs is not None
    supervisor = FerryProcess(
        ["workers", "start", "--num-workers", "1", "--base-metrics-port", str(free_port_range(2))],
        {"REDIS_URL": redis_url, "MAIN_SERVER_URL": sink.url, "MAIN_SERVER_CA_FILE": str(sink.certs.ca),
         "FERRY_LEASE_SECONDS": "2", "LOG_LEVEL": "INFO", "FERRY_PORTABLE_PROCESS_CONTROL": "true"},
        tmp_path / "workers.log",
    )
    supervisor.start()
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
