"""What every benchmark kind shares: bodies, the sink, Redis, processes, CPU, and rounds.

Figures are medians of several runs, the systems interleaved round by round (so that the
machine's drift hits all of them alike). A run during which other processes of the
machine used more than `FOREIGN_LIMIT` of a core is run again (up to `retries` times);
the quietest attempt is kept and its foreign load reported beside the figure.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.servers import RedisProcess, free_port  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
FOREIGN_LIMIT = 0.25  # cores


# -- processes ---------------------------------------------------------------------------


def spawn(command: list[str], log: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """A process in a session of its own, so that its children are found and stopped with it."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            command,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            cwd=cwd or ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process's session, SIGKILL what lingers."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(grace)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(grace)


def wait_listening(port: int, process: subprocess.Popen[bytes], log: Path,
                   timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}: {log.read_text()[-1500:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"not listening on {port} after {timeout} s: {log.read_text()[-1500:]}")


def _proc_stats() -> dict[int, tuple[int, int, int, int]]:
    """pid -> (ppid, session, CPU ticks, RSS pages) of every live process."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found[int(stat.parent.name)] = (
            int(fields[1]), int(fields[3]), int(fields[11]) + int(fields[12]), int(fields[21])
        )
    return found


def session_cpu(pid: int) -> float:
    """CPU seconds of every live process of the session `pid` leads."""
    return sum(s[2] for s in _proc_stats().values() if s[1] == pid) / CLOCK_TICKS


def session_rss_mib(pid: int) -> float:
    return sum(s[3] for s in _proc_stats().values() if s[1] == pid) * PAGE_KIB / 1024


def own_cpu() -> float:
    """CPU seconds of this process, its live descendants, and the children it reaped."""
    stats = _proc_stats()
    ours = {os.getpid()}
    changed = True
    while changed:
        changed = False
        for pid, (ppid, *_rest) in stats.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                changed = True
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)  # children that ended, and theirs
    return sum(stats[pid][2] for pid in ours) / CLOCK_TICKS + reaped.ru_utime + reaped.ru_stime


def machine_busy() -> float:
    """CPU seconds all cores spent busy so far (steal included)."""
    ticks = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS


class LoadMeter:
    """Other processes' CPU (in cores) between `start` and `stop`."""

    def start(self) -> None:
        self.at, self.busy, self.ours = time.monotonic(), machine_busy(), own_cpu()

    def stop(self) -> float:
        elapsed = max(time.monotonic() - self.at, 1e-6)
        foreign = (machine_busy() - self.busy) - (own_cpu() - self.ours)
        return max(foreign, 0.0) / elapsed


# -- the sink and Redis ------------------------------------------------------------------


class Sink:
    def __init__(self, work: Path, certfile: Path | None = None, keyfile: Path | None = None,
                 client_ca: Path | None = None):
        self.port, self.control_port = free_port(), free_port()
        tls = ["--certfile", str(certfile), "--keyfile", str(keyfile)] if certfile else []
        tls += ["--client-ca", str(client_ca)] if client_ca else []
        log = work / "sink.log"
        self.process = spawn([sys.executable, "-m", "bench.sink", "--port", str(self.port),
                              "--control-port", str(self.control_port), *tls], log)
        self.scheme = "https" if certfile else "http"
        wait_listening(self.port, self.process, log)
        wait_listening(self.control_port, self.process, log)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/webhook"

    def _get(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.control_port}{path}", method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        return self._get("/stats")  # type: ignore[no-any-return]

    def latencies(self) -> list[float]:
        return self._get("/latencies")  # type: ignore[no-any-return]

    def reset(self) -> None:
        self._get("/reset", "POST")

    def wait_for(self, count: int, process: subprocess.Popen[bytes] | None, timeout: float,
                 on_first: Callable[[], None] | None = None) -> dict[str, Any]:
        """Poll until `count` unique arrivals (calling `on_first` at the first one)."""
        deadline = time.monotonic() + timeout
        first_seen = False
        while time.monotonic() < deadline:
            stats = self.stats()
            if stats["unique"] and not first_seen and on_first:
                on_first()
            first_seen = first_seen or bool(stats["unique"])
            if stats["unique"] >= count:
                return stats
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"exited with {process.returncode} at {stats['unique']}/{count}")
            time.sleep(0.02)
        raise TimeoutError(f"{self.stats()['unique']}/{count} arrived in {timeout} s")

    def close(self) -> None:
        stop(self.process)


@contextmanager
def redis_server(work: Path, kind: str = "valkey") -> Iterator[RedisProcess]:
    """A fresh Valkey (ferry's bundled one) with AOF, appendfsync everysec, as in production."""
    server = RedisProcess(kind, work / f"redis-{free_port()}", appendfsync="everysec")
    server.start()
    try:
        yield server
    finally:
        server.kill()


# -- rounds ------------------------------------------------------------------------------


@dataclass
class Series:
    """The runs of one (system, setting): figures by name, and each run's foreign load."""

    runs: list[dict[str, float]] = field(default_factory=list)

    def median(self, name: str) -> float:
        values = [run[name] for run in self.runs if name in run]
        return statistics.median(values) if values else float("nan")


def measured(run: Callable[[], dict[str, float]], retries: int) -> dict[str, float]:
    """One run; again (up to `retries` times) while foreign load was above the limit."""
    best: dict[str, float] | None = None
    for _ in range(retries + 1):
        meter = LoadMeter()
        meter.start()
        figures = run()
        figures["foreign_load"] = meter.stop()
        if best is None or figures["foreign_load"] < best["foreign_load"]:
            best = figures
        if figures["foreign_load"] <= FOREIGN_LIMIT:
            break
    assert best is not None
    return best


def rounds(cases: list[tuple[str, Callable[[], dict[str, float]]]], runs: int, retries: int,
           say: Callable[[str], None] = print) -> dict[str, Series]:
    """Each case once per round, round after round: the interleaving that spreads drift."""
    results: dict[str, Series] = {name: Series() for name, _ in cases}
    for number in range(runs):
        for name, run in cases:
            try:
                figures = measured(run, retries)
            except Exception as error:  # a failed system is reported, the others go on
                say(f"  round {number + 1} {name}: FAILED {type(error).__name__}: {error}")
                results[name].runs.append({"failed": 1.0})
                continue
            results[name].runs.append(figures)
            shown = ", ".join(f"{k}={v:,.4g}" for k, v in figures.items())
            say(f"  round {number + 1} {name}: {shown}")
    return results
