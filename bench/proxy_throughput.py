"""Requests/s of ferry's ingest route, against baselines measured in the same run.

wrk (`-t2 -c64`, a 500-byte JSON POST with `Authorization: Bearer`) drives, over plain
HTTP and HTTPS (trustme certificate), one at a time, each against a fresh Valkey
(AOF, appendfsync everysec):

- bare baseline:  bare Starlette route answering 202 (bench/baseline_app.py --kind bare);
- LPUSH baseline: the same plus one redis-py LPUSH per request (--kind lpush);
- LPUSH, 1 write: the LPUSH baseline on ferry's HTTP protocol, which sends a response in one
                  write (--kind lpush --one-write): what ferry gains from that alone;
- ferry proxy:    `ferry proxy --workers 1`, `POST /api/v1/messages`;
- ferry batch:    `ferry proxy --workers 1`, `POST /api/v1/messages/batch`, 100 messages a request.

Each target is run `--runs` times (interleaved, so drift hits all alike); the table shows
the median req/s, its spread ((max - min) / median), messages/s, and the ratio of messages/s
to the LPUSH baseline of the same scheme (so include `lpush` in `--targets`): the median of
each run's ratio to the LPUSH run beside it (pairs cancel the machine's drift), and the
lowest of those ("worst"). It also shows
the CPU used during the run (100% = one core) by the server, Valkey, wrk and everything else
("other": other processes, unattributed kernel work; a busy machine makes figures unreliable).
A target that answered non-2xx or had socket errors is marked VOID. With `--pin split` (the
default) the server has core 0 to itself and wrk + Valkey share core 1, so they never take
the server's core; `--pin none` leaves placement to the scheduler.

    python bench/proxy_throughput.py [--duration 10] [--runs 3] [--pin split|none]
        [--targets bare lpush ferry batch] [--schemes http https]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.certs import CertFiles, make_certs  # noqa: E402
from tests.support.servers import RedisProcess, free_port  # noqa: E402

API_KEY = "bench-key"
PAYLOAD = {"payload": "x" * 485}
BODY = json.dumps(PAYLOAD, separators=(", ", ": ")).encode()  # 500 bytes (docs/architecture.md)
BATCH_SIZE = 100
BATCH_BODY = json.dumps({"messages": [{"json": PAYLOAD}] * BATCH_SIZE}).encode()
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
assert len(BODY) == 500, len(BODY)


@dataclass(frozen=True)
class Target:
    key: str  # as --targets names it
    name: str
    server: str  # "bare", "lpush" (bench/baseline_app.py) or "ferry"
    path: str
    body: bytes
    per_request: int = 1
    server_args: tuple[str, ...] = ()


TARGETS = [
    Target("bare", "bare baseline", "bare", "/api/v1/messages", BODY),
    Target("lpush", "LPUSH baseline", "lpush", "/api/v1/messages", BODY),
    Target("lpush1w", "LPUSH, 1 write", "lpush", "/api/v1/messages", BODY, 1, ("--one-write",)),
    Target("ferry", "ferry proxy", "ferry", "/api/v1/messages", BODY),
    Target(
        "batch",
        f"ferry batch x{BATCH_SIZE}",
        "ferry",
        "/api/v1/messages/batch",
        BATCH_BODY,
        BATCH_SIZE,
    ),
]


@dataclass
class Run:
    rps: float
    requests: int
    non_2xx: int
    socket_errors: int
    queued: int  # LLEN message_queue afterwards (the baselines' and ferry's queue)
    server_cpu: float
    valkey_cpu: float
    wrk_cpu: float
    other_cpu: float  # everything else on the machine, steal time included: contention


def lua_script(target: Target) -> str:
    body = target.body.decode()
    assert "]==]" not in body
    return (
        'wrk.method = "POST"\n'
        f"wrk.body = [==[{body}]==]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {API_KEY}"\n'
    )


def cpu_seconds(pid: int, session: bool = False) -> float:
    """User + system CPU of a process, or of every live process in its session (its children too)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat") if session else [Path(f"/proc/{pid}/stat")]:
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if not session or int(fields[3]) == pid:  # fields[0] is field 3 of proc(5): state
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy so far, steal time (the hypervisor's) included."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS  # all but idle and iowait


def pin(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


def start_server(
    target: Target,
    scheme: str,
    port: int,
    redis_url: str,
    certs: CertFiles,
    work: Path,
    cpus: str | None,
) -> subprocess.Popen[bytes]:
    tls = (
        ["--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key)]
        if scheme == "https"
        else []
    )
    env = dict(os.environ)
    if target.server == "ferry":
        command = [
            shutil.which("ferry") or "ferry",
            "proxy",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            *tls,
        ]
        env.update(
            REDIS_URL=redis_url,
            FERRY_API_KEYS=API_KEY,
            LOG_LEVEL="WARNING",
            FERRY_HOME=str(work / "home"),
        )
    else:
        command = [
            sys.executable,
            str(ROOT / "bench" / "baseline_app.py"),
            "--kind",
            target.server,
            "--port",
            str(port),
            "--redis-url",
            redis_url,
            *tls,
            *target.server_args,
        ]
    with open(work / "server.log", "ab") as log:
        return subprocess.Popen(
            [*pin(cpus), *command],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's whole process group (its own session), SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    try:  # children left behind (e.g. a worker process of `ferry proxy`)
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def post_once(scheme: str, port: int, target: Target, certs: CertFiles) -> tuple[int, bytes]:
    if scheme == "https":
        context = ssl.create_default_context(cafile=str(certs.ca))
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, context=context, timeout=10
        )
    else:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
        connection.request("POST", target.path, body=target.body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_ready(
    port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"server exited with {process.returncode}:\n{log.read_text()[-2000:]}"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(
        f"server did not accept connections within {timeout} s:\n{log.read_text()[-2000:]}"
    )


def parse_wrk(output: str) -> tuple[float, int, int, int]:
    """Requests/sec, requests completed, non-2xx (wrk counts status >= 400), socket errors."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return (
        rps,
        requests,
        int(non_2xx.group(1)) if non_2xx else 0,
        sum(map(int, errors.groups())) if errors else 0,
    )


def one_run(target: Target, scheme: str, certs: CertFiles, args: argparse.Namespace) -> Run:
    server_cpus, load_cpus = ("0", "1") if args.pin == "split" else (None, None)
    with tempfile.TemporaryDirectory(prefix="ferry-bench-") as tmp:
        work = Path(tmp)
        redis = RedisProcess("valkey", work / "valkey", appendfsync="everysec")
        redis.start()
        server = None
        try:
            assert redis.process is not None
            if load_cpus:
                subprocess.run(
                    ["taskset", "-a", "-p", "-c", load_cpus, str(redis.process.pid)],
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
            port = free_port()
            server = start_server(target, scheme, port, redis.url, certs, work, server_cpus)
            wait_ready(port, server, work / "server.log")
            status, answer = post_once(scheme, port, target, certs)
            if not 200 <= status < 300:
                raise RuntimeError(f"{target.name} answered {status}: {answer[:300]!r}")
            script = work / "post.lua"
            script.write_text(lua_script(target))
            url = f"{scheme}://127.0.0.1:{port}{target.path}"
            command = [
                *pin(load_cpus),
                "wrk",
                f"-t{args.threads}",
                f"-c{args.connections}",
                f"-d{args.duration}s",
                "-s",
                str(script),
                url,
            ]

            cpu_before = (
                cpu_seconds(server.pid, session=True),
                cpu_seconds(redis.process.pid),
                resource.getrusage(resource.RUSAGE_CHILDREN),
                machine_busy_seconds(),
            )
            started = time.perf_counter()
            wrk = subprocess.run(
                command, check=False, capture_output=True, text=True, timeout=args.duration + 60
            )
            elapsed = time.perf_counter() - started
            if wrk.returncode != 0:
                raise RuntimeError(f"wrk failed ({wrk.returncode}): {wrk.stderr or wrk.stdout}")
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            wrk_cpu = (
                after.ru_utime + after.ru_stime - cpu_before[2].ru_utime - cpu_before[2].ru_stime
            )
            server_cpu = cpu_seconds(server.pid, session=True) - cpu_before[0]
            valkey_cpu = cpu_seconds(redis.process.pid) - cpu_before[1]
            other_cpu = machine_busy_seconds() - cpu_before[3] - wrk_cpu - server_cpu - valkey_cpu

            rps, requests, non_2xx, socket_errors = parse_wrk(wrk.stdout)
            with redis.client() as client:
                queued = client.llen("message_queue")
            assert isinstance(queued, int)
            return Run(
                rps,
                requests,
                non_2xx,
                socket_errors,
                queued,
                server_cpu / elapsed,
                valkey_cpu / elapsed,
                wrk_cpu / elapsed,
                max(other_cpu, 0) / elapsed,
            )
        finally:
            if server is not None:
                stop(server)
            redis.kill()


def ferry_proxy_available() -> bool:
    ferry = shutil.which("ferry")
    if ferry is None:
        return False
    return (
        subprocess.run([ferry, "proxy", "--help"], check=False, capture_output=True).returncode == 0
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds of each wrk run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--schemes", nargs="+", choices=["http", "https"], default=["http", "https"]
    )
    parser.add_argument(
        "--targets", nargs="+", choices=[t.key for t in TARGETS], default=[t.key for t in TARGETS]
    )
    parser.add_argument(
        "--pin",
        choices=["split", "none"],
        default="split",
        help="split: server on core 0, wrk and Valkey on core 1; none: let the scheduler decide",
    )
    args = parser.parse_args()

    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk (Debian/Ubuntu), then run this again.")
    if args.pin == "split" and (os.cpu_count() or 1) < 2:
        sys.exit("--pin split needs 2 cores; use --pin none")
    targets = [target for target in TARGETS if target.key in args.targets]
    if any(target.server == "ferry" for target in targets) and not ferry_proxy_available():
        print(
            "`ferry proxy --help` failed: skipping the ferry targets, measuring the baselines only."
        )
        targets = [target for target in targets if target.server != "ferry"]

    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, {len(BODY)}-byte JSON body, "
        f"median of {args.runs} runs, pin={args.pin}"
    )
    runs: dict[tuple[str, str], list[Run]] = {}
    with tempfile.TemporaryDirectory(prefix="ferry-bench-certs-") as cert_dir:
        certs = make_certs(Path(cert_dir))
        for number in range(1, args.runs + 1):
            for scheme in args.schemes:
                for target in targets:
                    try:
                        run = one_run(target, scheme, certs, args)
                    except RuntimeError as error:
                        print(f"  run {number} {target.name} {scheme}: FAILED: {error}")
                        continue
                    runs.setdefault((target.name, scheme), []).append(run)
                    print(
                        f"  run {number} {target.name:>17} {scheme:>5}: {run.rps:>9,.0f} req/s  "
                        f"non-2xx {run.non_2xx}  socket errors {run.socket_errors}",
                        flush=True,
                    )

    print()
    print(
        f"{'target':>17} {'scheme':>6} {'req/s':>9} {'spread':>6} {'msgs/s':>9} {'ratio':>6} {'worst':>6} "
        f"{'server':>7} {'valkey':>7} {'wrk':>5} {'other':>6}  notes"
    )
    for scheme in args.schemes:
        lpush = runs.get(("LPUSH baseline", scheme), [])
        for target in targets:
            done = runs.get((target.name, scheme))
            if not done:
                print(f"{target.name:>17} {scheme:>6}  (no successful run)")
                continue
            rps = statistics.median(run.rps for run in done)
            messages = rps * target.per_request
            spread = (max(r.rps for r in done) - min(r.rps for r in done)) / rps
            paired = [
                run.rps * target.per_request / base.rps
                for run, base in zip(done, lpush, strict=False)
            ]
            ratio = f"{statistics.median(paired):.2f}" if paired else "-"
            worst = f"{min(paired):.2f}" if paired else "-"
            notes = []
            non_2xx, socket_errors = (
                sum(r.non_2xx for r in done),
                sum(r.socket_errors for r in done),
            )
            if non_2xx or socket_errors:
                notes.append(f"VOID: {non_2xx} non-2xx, {socket_errors} socket errors")
            if target.server != "bare" and any(
                r.queued < r.requests * target.per_request for r in done
            ):
                notes.append("queue shorter than the requests answered")
            print(
                f"{target.name:>17} {scheme:>6} {rps:>9,.0f} {spread:>6.0%} {messages:>9,.0f} {ratio:>6} {worst:>6} "
                f"{statistics.median(r.server_cpu for r in done):>7.0%} "
                f"{statistics.median(r.valkey_cpu for r in done):>7.0%} "
                f"{statistics.median(r.wrk_cpu for r in done):>5.0%} "
                f"{statistics.median(r.other_cpu for r in done):>6.0%}  {'; '.join(notes)}"
            )


if __name__ == "__main__":
    main()
