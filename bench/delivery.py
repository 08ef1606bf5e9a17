"""Delivery: one worker process draining pre-loaded 500-byte messages into the sink.

Each system gets a fresh Valkey, its messages loaded with its own client, then its worker
is started; the sink times it from the first unique arrival to the last (enqueue and
start-up excluded). CPU per message is the worker's (all processes of its session) from
the first arrival to the last; RSS is the session's at the end.
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import harness

# Name shown -> module under bench.peers. ferry, the ceiling and the textbook consumer
# need nothing beyond ferry's test venv; the others need the bench extra (or arq's venv).
SYSTEMS = {
    "ceiling (bare aiohttp)": "ceiling",
    "ceiling (bare pyreqwest)": "ceiling_pyreqwest",
    "ferry": "ferry_worker",
    "ferry (aiohttp)": "ferry_aiohttp",
    "textbook BLMOVE/POST/LREM": "textbook",
    "Celery": "celery_peer",
    "Dramatiq": "dramatiq_peer",
    "RQ": "rq_peer",
    "arq": "arq_peer",
    "saq": "saq_peer",
    "taskiq": "taskiq_peer",
    "huey": "huey_peer",
}
CORE = ["ceiling (bare aiohttp)", "ceiling (bare pyreqwest)", "ferry", "ferry (aiohttp)",
        "textbook BLMOVE/POST/LREM"]
ARQ_PYTHON = os.environ.get("BENCH_ARQ_PYTHON", "/tmp/venv-arq/bin/python")


@dataclass(frozen=True)
class System:
    name: str
    module: str
    python: str

    @property
    def info(self) -> dict[str, str]:
        """GUARANTEE and CONCURRENCY, read without importing the peer (its venv may differ)."""
        tree = ast.parse((Path(__file__).parent / "peers" / f"{self.module}.py").read_text())
        constants = {
            node.targets[0].id: ast.literal_eval(node.value)
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in ("GUARANTEE", "CONCURRENCY")
        }
        return {"guarantee": constants["GUARANTEE"], "concurrency_means": constants["CONCURRENCY"]}


def available(names: list[str]) -> tuple[list[System], list[str]]:
    """The systems that can run here, and why the others cannot."""
    systems, missing = [], []
    for name in names:
        module = SYSTEMS[name]
        python = ARQ_PYTHON if module == "arq_peer" else sys.executable
        if module == "arq_peer":
            ok = Path(python).exists()
        else:
            try:
                importlib.import_module(f"bench.peers.{module}")
                ok = True
            except ImportError:
                ok = False
        if ok:
            systems.append(System(name, module, python))
        else:
            missing.append(f"{name} (not installed: pip install -e '.[bench]'; arq: {ARQ_PYTHON})")
    return systems, missing


def one_run(system: System, sink: harness.Sink, work: Path, count: int, concurrency: int,
            timeout: float) -> dict[str, float]:
    sink.reset()
    with harness.redis_server(work) as redis:
        env = {"BENCH_REDIS_URL": redis.url, "BENCH_SINK_URL": sink.url,
               "BENCH_CONCURRENCY": str(concurrency), "BENCH_COUNT": str(count)}
        if system.module in ("ferry_worker", "ferry_aiohttp"):
            ferry = importlib.import_module(f"bench.peers.{system.module}")
            env.update(ferry.env(redis.url, sink.url, concurrency))
        loader = subprocess.run(
            [system.python, "-m", f"bench.peers.{system.module}", "load", redis.url, str(count)],
            env={**os.environ, "PYTHONPATH": str(harness.ROOT), **env}, cwd=harness.ROOT,
            capture_output=True, text=True, timeout=600)
        if loader.returncode:
            raise RuntimeError(f"load failed: {loader.stderr[-1500:]}")
        argv = _worker_argv(system, concurrency)
        log = work / f"{system.module}-{concurrency}.log"
        process = harness.spawn(argv, log, env)
        try:
            cpu_at_first: list[float] = []
            stats = sink.wait_for(count, process, timeout,
                                  on_first=lambda: cpu_at_first.append(harness.session_cpu(process.pid)))
            cpu = harness.session_cpu(process.pid) - (cpu_at_first or [0.0])[0]
            rss = harness.session_rss_mib(process.pid)
            time.sleep(0.3)  # a duplicate sent right after the last unique arrival
            duplicates = sink.stats()["duplicates"]
        except Exception:
            sys.stderr.write(log.read_text()[-2000:])
            raise
        finally:
            harness.stop(process)
    elapsed = max(stats["last"] - stats["first"], 1e-6)
    return {
        "rate": (count - 1) / elapsed,
        "duplicates": float(duplicates),
        "rss_mib": rss,
        "cpu_us_per_message": cpu / count * 1e6,
    }


def _worker_argv(system: System, concurrency: int) -> list[str]:
    if system.module == "arq_peer":  # arq_peer imports arq: ask its own venv's layout
        return [str(Path(system.python).parent / "arq"), "bench.peers.arq_peer.WorkerSettings"]
    module = importlib.import_module(f"bench.peers.{system.module}")
    return module.worker(system.python, concurrency)  # type: ignore[no-any-return]


def run(names: list[str], count: int, concurrencies: list[int], runs: int, retries: int,
        timeout: float) -> dict[str, Any]:
    systems, missing = available(names)
    with tempfile.TemporaryDirectory(prefix="ferry-bench-delivery-") as tmp:
        work = Path(tmp)
        sink = harness.Sink(work)
        try:
            cases = [
                (f"{system.name} @{concurrency}",
                 lambda s=system, c=concurrency: one_run(s, sink, work, count, c, timeout))
                for concurrency in concurrencies for system in systems
                if system.module != "rq_peer" or concurrency == concurrencies[0]  # RQ: one at a time
            ]
            series = harness.rounds(cases, runs, retries)
        finally:
            sink.close()
    rows = []
    for concurrency in concurrencies:
        ceiling = series.get(f"{CORE[0]} @{concurrency}")
        ferry = series.get(f"ferry @{concurrency}")
        for system in systems:
            s = series.get(f"{system.name} @{concurrency}")
            if s is None:
                continue
            rate = s.median("rate")
            rows.append({
                "system": system.name,
                "concurrency": concurrency,
                "rate": rate,
                "to_ceiling": rate / ceiling.median("rate") if ceiling else float("nan"),
                "to_ferry": rate / ferry.median("rate") if ferry else float("nan"),
                "duplicates": s.median("duplicates"),
                "rss_mib": s.median("rss_mib"),
                "cpu_us_per_message": s.median("cpu_us_per_message"),
                "foreign_load": s.median("foreign_load"),
                "runs": len([r for r in s.runs if "rate" in r]),
                "failed": len([r for r in s.runs if "failed" in r]),
                **system.info,
            })
    return {"count": count, "rows": rows, "missing": missing}
