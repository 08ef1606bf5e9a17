"""Ingest: `POST /api/v1/messages` requests/s, ferry's proxy against a bare LPUSH route.

wrk (`-t2 -c64`, the 500-byte body, `Authorization: Bearer`) against `ferry proxy
--workers N` and against bench/baseline_app.py's Starlette route doing one LPUSH under
uvicorn with N processes, over HTTP and HTTPS (trustme), each against a fresh Valkey.
Nothing is pinned: server, Valkey and wrk share the 2 cores as they would in production.
Beside each figure, the server's CPU per request (all its processes) and how many cores the
whole machine was busy: once that nears all of them, the machine is the limit, and the
ratio is of everything a request costs it (wrk, Valkey and the kernel included).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.proxy_throughput import API_KEY, BODY, TARGETS, lua_script, parse_wrk, post_once

LPUSH = next(target for target in TARGETS if target.key == "lpush")
FERRY = next(target for target in TARGETS if target.key == "ferry")


def server_command(kind: str, scheme: str, port: int, processes: int, redis_url: str,
                   certs: Any) -> list[str]:
    tls = ["--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key)] if scheme == "https" else []
    if kind == "ferry":
        return [str(Path(sys.executable).parent / "ferry"), "proxy", "--host", "127.0.0.1",
                "--port", str(port), "--workers", str(processes), *tls]
    return [sys.executable, str(harness.ROOT / "bench" / "baseline_app.py"), "--kind", "lpush",
            "--port", str(port), "--redis-url", redis_url, "--workers", str(processes), *tls]


def one_run(kind: str, scheme: str, processes: int, certs: Any, work: Path,
            duration: int) -> dict[str, float]:
    with harness.redis_server(work) as redis:
        port = harness.free_port()
        env = {"REDIS_URL": redis.url, "FERRY_API_KEYS": API_KEY, "LOG_LEVEL": "WARNING",
               "FERRY_HOME": str(work / "home")}
        log = work / f"{kind}-{scheme}-{processes}.log"
        server = harness.spawn(server_command(kind, scheme, port, processes, redis.url, certs), log, env)
        try:
            harness.wait_listening(port, server, log)
            target = FERRY if kind == "ferry" else LPUSH
            status, answer = post_once(scheme, port, target, certs)
            if not 200 <= status < 300:
                raise RuntimeError(f"{kind} answered {status}: {answer[:200]!r}")
            script = work / "post.lua"
            script.write_text(lua_script(target))
            server_cpu, busy, started = harness.session_cpu(server.pid), harness.machine_busy(), time.monotonic()
            wrk = subprocess.run(
                ["wrk", "-t2", "-c64", f"-d{duration}s", "-s", str(script),
                 f"{scheme}://127.0.0.1:{port}{target.path}"],
                capture_output=True, text=True, timeout=duration + 60)
            elapsed = time.monotonic() - started
            server_cpu, busy = harness.session_cpu(server.pid) - server_cpu, harness.machine_busy() - busy
            rps, requests, non_2xx, errors = parse_wrk(wrk.stdout)
            if non_2xx or errors:
                raise RuntimeError(f"{non_2xx} non-2xx, {errors} socket errors")
            return {"rps": rps, "server_us_per_request": server_cpu / max(requests, 1) * 1e6,
                    "machine_busy": busy / elapsed}
        finally:
            harness.stop(server)


def run(schemes: list[str], processes: list[int], duration: int, runs: int,
        retries: int) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        return {"rows": [], "missing": ["wrk (apt-get install wrk)"]}
    from tests.support.certs import make_certs

    with tempfile.TemporaryDirectory(prefix="ferry-bench-ingest-") as tmp:
        work = Path(tmp)
        certs = make_certs(work)
        cases = [(f"{kind} {scheme} x{n}",
                  lambda k=kind, s=scheme, n=n: one_run(k, s, n, certs, work, duration))
                 for scheme in schemes for n in processes for kind in ("lpush", "ferry")]
        series = harness.rounds(cases, runs, retries)
    rows = []
    for scheme in schemes:
        for n in processes:
            ferry, lpush = series[f"ferry {scheme} x{n}"], series[f"lpush {scheme} x{n}"]
            rows.append({"scheme": scheme, "processes": n, "ferry_rps": ferry.median("rps"),
                         "lpush_rps": lpush.median("rps"),
                         "ratio": ferry.median("rps") / lpush.median("rps"),
                         "ferry_server_us": ferry.median("server_us_per_request"),
                         "lpush_server_us": lpush.median("server_us_per_request"),
                         "ferry_machine_busy": ferry.median("machine_busy"),
                         "lpush_machine_busy": lpush.median("machine_busy"),
                         "foreign_load": ferry.median("foreign_load")})
    return {"rows": rows, "missing": [], "body_bytes": len(BODY), "load_generator": "wrk -t2 -c64"}
