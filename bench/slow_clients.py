"""What idle and slow clients cost one proxy process: memory, descriptors, and a
well-behaved client's latency.

One `ferry proxy` (one process, HTTPS with a trustme certificate, a fresh Valkey, its
descriptor limit set to `--nofile`, like a default Linux account's 1,024), on loopback.
Three phases:

- at rest:  `--requests` normal POSTs (500-byte JSON, each on a new TLS connection) one
            every `--interval` seconds;
- attack:   `--clients` of each kind of attacker, for `--hold` seconds, while the same
            normal POSTs go on:
              idle       TLS handshake done, then nothing;
              half head  a request line and a header, then one more header byte every
                         `--drip` seconds (a slowloris);
              slow body  a whole head declaring a 1 MiB body, half of it at once, then
                         one byte every `--drip` seconds;
            an attacker whose connection the proxy closes opens a new one at once (as a
            real one would), so the attack keeps its size if the proxy only closes;
- after:    every attacker gone, 3 s later.

For each phase: the proxy's RSS (peak while attacked), its open descriptors, the normal
POSTs' p50/p99/max latency (connect + handshake + answer) and failures (resets, refusals,
timeouts); for each attacker kind: connections opened, closed by the proxy (and their
median lifetime, and what the proxy said first), still open when the hold ended. The
normal client runs in a process of its own; with `--pin split` (the default) the proxy
has core 0 and everything else core 1. Everything is bounded: connections by
`--clients`, time by `--hold` (the whole run takes about `--hold` + 20 s).

    python bench/slow_clients.py [--clients 300] [--hold 30] [--drip 2] [--requests 300]
        [--nofile 1024] [--pin split|none] [--kinds idle "half head" "slow body"]
        [--env NAME=VALUE ...]

Run it against an older tree with `PYTHONPATH=<tree>/src python bench/slow_clients.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.certs import CertFiles, make_certs  # noqa: E402
from tests.support.servers import RedisProcess, free_port  # noqa: E402

API_KEY = "bench-key"
BODY = json.dumps({"payload": "x" * 485}, separators=(", ", ": ")).encode()  # 500 bytes
SLOW_BODY_BYTES = 1 << 20
KINDS = ("idle", "half head", "slow body")
assert len(BODY) == 500


# The normal client, run as `slow_clients.py --normal-client ...` in a process of its own.


def normal_client(port: int, cafile: str, count: int, interval: float) -> None:
    """`count` POSTs, each on a new TLS connection, one every `interval` s; prints JSON lines."""
    import http.client

    context = ssl.create_default_context(cafile=cafile)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    next_at = time.monotonic()
    for _ in range(count):
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at += interval
        started = time.perf_counter()
        connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=15)
        try:
            connection.request("POST", "/api/v1/messages", body=BODY, headers=headers)
            response = connection.getresponse()
            body = response.read()
            outcome = str(response.status)
            if response.status != 202:
                try:
                    outcome += " " + json.loads(body)["error"]
                except (ValueError, KeyError, TypeError):
                    pass
        except TimeoutError:
            outcome = "timeout"
        except (OSError, http.client.HTTPException) as error:
            outcome = type(error).__name__
        finally:
            connection.close()
        print(json.dumps({"seconds": time.perf_counter() - started, "outcome": outcome}), flush=True)


@dataclass
class Latencies:
    seconds: list[float] = field(default_factory=list)  # of the 202s
    failures: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, output: str) -> Latencies:
        result = cls()
        for line in output.splitlines():
            answer = json.loads(line)
            if answer["outcome"] == "202":
                result.seconds.append(answer["seconds"])
            else:
                result.failures[answer["outcome"]] = result.failures.get(answer["outcome"], 0) + 1
        return result

    def quantile(self, q: float) -> float | None:
        if not self.seconds:
            return None
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_normal_client(port: int, certs: CertFiles, count: int, interval: float, cpus: str | None) -> subprocess.Popen[str]:
    command = [sys.executable, __file__, "--normal-client", str(port), str(certs.ca), str(count), str(interval)]
    return subprocess.Popen([*pin(cpus), *command], stdout=subprocess.PIPE, text=True)


# The proxy.


def pin(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def limit_descriptors(count: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


def start_proxy(port: int, redis_url: str, certs: CertFiles, work: Path, args: argparse.Namespace, cpus: str | None) -> subprocess.Popen[bytes]:
    ferry = Path(sys.executable).parent / "ferry"
    command = [str(ferry), "proxy", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key)]
    env = {**os.environ, "REDIS_URL": redis_url, "FERRY_API_KEYS": API_KEY, "LOG_LEVEL": "ERROR",
           "FERRY_HOME": str(work / "home")}
    env.update(item.split("=", 1) for item in args.env)
    with open(work / "proxy.log", "ab") as log:
        return subprocess.Popen(
            [*pin(cpus), *command], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=lambda: limit_descriptors(args.nofile),
        )


def wait_ready(port: int, certs: CertFiles, process: subprocess.Popen[bytes], log: Path) -> None:
    import http.client

    context = ssl.create_default_context(cafile=str(certs.ca))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the proxy exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=2)
            connection.request("GET", "/api/v1/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the proxy did not get ready:\n{log.read_text()[-2000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


# The attackers.


@dataclass
class Kind:
    name: str
    opened: int = 0
    failed_to_open: int = 0
    closed_by_proxy: int = 0
    lifetimes: list[float] = field(default_factory=list)
    first_words: dict[str, int] = field(default_factory=dict)  # what the proxy said before closing
    open_now: int = 0


class Attack:
    def __init__(self, port: int, certs: CertFiles, args: argparse.Namespace) -> None:
        self.port = port
        self.context = ssl.create_default_context(cafile=str(certs.ca))
        self.drip = args.drip
        self.clients = args.clients
        self.kinds = {name: Kind(name) for name in args.kinds}
        self.stopping = asyncio.Event()
        self.handshakes = asyncio.Semaphore(64)  # connects in flight at once, as a careful attacker would
        self.writers: set[asyncio.StreamWriter] = set()

    async def one(self, kind: Kind) -> None:
        """One attacker: connect, misbehave until the proxy closes, connect again; until stopped."""
        while not self.stopping.is_set():
            try:
                async with self.handshakes:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", self.port, ssl=self.context, server_hostname="localhost"),
                        15,
                    )
            except (OSError, TimeoutError, ssl.SSLError):
                kind.failed_to_open += 1
                await asyncio.sleep(0.5)
                continue
            kind.opened += 1
            kind.open_now += 1
            self.writers.add(writer)
            opened_at = time.monotonic()
            misbehaving = asyncio.create_task(self.misbehave(kind.name, writer))
            answer = b""
            try:
                while not self.stopping.is_set():
                    chunk = await reader.read(4096)
                    if not chunk:
                        break
                    answer += chunk
            except (OSError, ssl.SSLError):
                pass
            finally:
                kind.open_now -= 1
                misbehaving.cancel()
                self.writers.discard(writer)
                writer.transport.abort()
            if not self.stopping.is_set():
                kind.closed_by_proxy += 1
                kind.lifetimes.append(time.monotonic() - opened_at)
                said = answer.split(b"\r\n", 1)[0].decode("latin-1")[9:12] or "nothing"
                if b'"error":"' in answer:
                    said += " " + answer.split(b'"error":"', 1)[1].split(b'"', 1)[0].decode()
                kind.first_words[said] = kind.first_words.get(said, 0) + 1

    async def misbehave(self, name: str, writer: asyncio.StreamWriter) -> None:
        try:
            if name == "idle":
                return
            if name == "half head":
                writer.write(b"POST /api/v1/messages HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
                while True:
                    await writer.drain()
                    await asyncio.sleep(self.drip)
                    writer.write(b"s")
            head = (
                b"POST /api/v1/messages HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
                + API_KEY.encode()
                + b"\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % SLOW_BODY_BYTES
            )
            writer.write(head + b"b" * (SLOW_BODY_BYTES // 2))
            while True:
                await writer.drain()
                await asyncio.sleep(self.drip)
                writer.write(b"b")
        except (OSError, ssl.SSLError, RuntimeError):
            return

    def start(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self.one(kind)) for kind in self.kinds.values() for _ in range(self.clients)]

    async def stop(self, tasks: list[asyncio.Task[None]]) -> None:
        self.stopping.set()
        for writer in list(self.writers):
            writer.transport.abort()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Phase:
    name: str
    rss_mb: float
    fds: int
    latencies: Latencies


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.1f}"


async def run(args: argparse.Namespace) -> None:
    proxy_cpus, load_cpus = ("0", "1") if args.pin == "split" else (None, None)
    if load_cpus:
        os.sched_setaffinity(0, {int(load_cpus)})
    with tempfile.TemporaryDirectory(prefix="ferry-slow-") as tmp:
        work = Path(tmp)
        certs = make_certs(work)
        redis = RedisProcess("valkey", work / "valkey", appendfsync="everysec")
        redis.start()
        port = free_port()
        proxy = start_proxy(port, redis.url, certs, work, args, proxy_cpus)
        try:
            await asyncio.to_thread(wait_ready, port, certs, proxy, work / "proxy.log")
            phases = []
            normal = start_normal_client(port, certs, args.requests, args.interval, load_cpus)
            output, _ = await asyncio.to_thread(normal.communicate)
            phases.append(Phase("at rest", rss_mb(proxy.pid), open_fds(proxy.pid), Latencies.parse(output)))

            attack = Attack(port, certs, args)
            tasks = attack.start()
            normal = start_normal_client(port, certs, args.requests, args.hold / args.requests, load_cpus)
            peak_rss, peak_fds = 0.0, 0
            ends = time.monotonic() + args.hold
            while time.monotonic() < ends and proxy.poll() is None:
                peak_rss = max(peak_rss, rss_mb(proxy.pid))
                peak_fds = max(peak_fds, open_fds(proxy.pid))
                await asyncio.sleep(0.25)
            still_open = {kind.name: kind.open_now for kind in attack.kinds.values()}
            await attack.stop(tasks)
            output, _ = await asyncio.to_thread(normal.communicate)
            phases.append(Phase("under attack (peak)", peak_rss, peak_fds, Latencies.parse(output)))

            await asyncio.sleep(3)
            normal = start_normal_client(port, certs, min(args.requests, 50), args.interval, load_cpus)
            output, _ = await asyncio.to_thread(normal.communicate)
            phases.append(Phase("after", rss_mb(proxy.pid), open_fds(proxy.pid), Latencies.parse(output)))
            with redis.client() as client:
                stored = client.llen("message_queue")
                bodies = sum(
                    1 for message_id in client.lrange("message_queue", 0, -1)
                    if client.hget(f"{{message_queue}}:msg:{message_id.decode()}", "body") != BODY
                )
        finally:
            stop(proxy)
            redis.kill()

    print(
        f"\n{args.clients} clients of each kind, held {args.hold} s, a byte every {args.drip} s; "
        f"proxy: 1 process, HTTPS, descriptor limit {args.nofile}"
        + (f", {' '.join(args.env)}" if args.env else "")
    )
    print("\n| phase | proxy RSS MB | proxy fds | normal POSTs: p50 ms | p99 ms | max ms | 202 | failures |")
    print("|---|---|---|---|---|---|---|---|")
    for phase in phases:
        lat = phase.latencies
        failures = ", ".join(f"{count} {what}" for what, count in sorted(lat.failures.items())) or "0"
        print(
            f"| {phase.name} | {phase.rss_mb:,.0f} | {phase.fds} | {fmt_ms(lat.quantile(0.5))} | "
            f"{fmt_ms(lat.quantile(0.99))} | {fmt_ms(max(lat.seconds, default=None))} | {len(lat.seconds)} | {failures} |"
        )
    print("\n| attacker | opened | could not open | closed by the proxy | median lifetime s | proxy said | open at the end |")
    print("|---|---|---|---|---|---|---|")
    for kind in attack.kinds.values():
        lifetime = f"{statistics.median(kind.lifetimes):.1f}" if kind.lifetimes else "-"
        said = ", ".join(f"{count}x {what}" for what, count in sorted(kind.first_words.items())) or "-"
        print(
            f"| {kind.name} | {kind.opened} | {kind.failed_to_open} | {kind.closed_by_proxy} | {lifetime} | "
            f"{said} | {still_open[kind.name]} |"
        )
    accepted = sum(len(phase.latencies.seconds) for phase in phases)
    print(f"\nstored: {stored} messages for {accepted} normal 202s; {bodies} with another body (an attacker's)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--normal-client":
        port, cafile, count, interval = sys.argv[2:6]
        normal_client(int(port), cafile, int(count), float(interval))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=300, help="attackers of each kind")
    parser.add_argument("--hold", type=float, default=30.0, help="seconds the attack lasts")
    parser.add_argument("--drip", type=float, default=2.0, help="seconds between a slow attacker's bytes")
    parser.add_argument("--requests", type=int, default=300, help="normal POSTs at rest and during the attack")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between normal POSTs at rest")
    parser.add_argument("--nofile", type=int, default=1024, help="the proxy's descriptor limit")
    parser.add_argument("--pin", choices=["split", "none"], default="split")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="which attackers")
    parser.add_argument("--env", nargs="*", default=[], help="NAME=VALUE settings for the proxy")
    args = parser.parse_args()
    if args.pin == "split" and (os.cpu_count() or 1) < 2:
        sys.exit("--pin split needs 2 cores; use --pin none")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = len(args.kinds) * args.clients + 256
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
