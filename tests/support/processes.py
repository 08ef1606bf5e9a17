"""ferry's own processes under test: the sink and workers, run as a user runs them."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.certs import CertFiles
from tests.support.servers import free_port


def ferry_command() -> str:
    """The `ferry` console script of the environment running the tests, found beside its
    interpreter: neither PATH nor an activated venv is needed, and no other install is taken."""
    script = Path(sys.executable).parent / "ferry"
    if not script.is_file():
        raise RuntimeError(f"no ferry console script beside {sys.executable} (pip install -e '.[test]')")
    return str(script)


def bare_env(**env: str) -> dict[str, str]:
    """An environment with nothing of the user's in it but a minimal PATH, and `env`.

    What the interpreter needs to run the same code under the same measurement is
    kept: PYTHONPATH (a tree run without installing it) and coverage's variables
    (subprocesses are measured too).
    """
    kept = {
        name: value
        for name, value in os.environ.items()
        if name == "PYTHONPATH" or name.startswith("COVERAGE_")
    }
    return {"PATH": "/usr/bin:/bin", **kept, **env}


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll until `predicate` returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


class FerryProcess:
    """A `ferry ...` subprocess whose output goes to a log file the test can read."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [ferry_command(), *self.args],
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as a terminal would make it
            )

    def start_listening(self, port: int, timeout: float = 30.0) -> None:
        """Start, then wait until the port takes connections; fail at once if the process exits."""
        FerryProcess.start(self)

        def listening() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.args[0]} exited with {self.process.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(listening, timeout=timeout)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def signal_group(self, signum: int) -> None:
        """Signal its whole process group, as Ctrl-C in a terminal does."""
        os.killpg(self.pid, signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass(frozen=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Sink(FerryProcess):
    """`ferry sink` over HTTPS (or HTTP), with a client that reads and steers it.

    With `--client-ca` among its flags, the client presents the test CA's client
    certificate. It may be killed and started again: same port, same database.
    """

    def __init__(self, directory: Path, certs: CertFiles | None, extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.certs = certs
        args = ["sink", "--port", str(self.port), "--db", str(directory / f"sink-{self.port}.db")]
        if certs is not None:
            args += ["--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key)]
        super().__init__(args + (extra or []), {}, directory / f"sink-{self.port}.log")
        self.client_context = ssl.create_default_context(cafile=str(certs.ca)) if certs else None
        if self.client_context is not None and "--client-ca" in (extra or []):
            self.client_context.load_cert_chain(certs.client_cert, certs.client_key)  # type: ignore[union-attr]

    @property
    def base(self) -> str:
        return f"{'https' if self.certs else 'http'}://localhost:{self.port}"

    @property
    def url(self) -> str:
        """What MAIN_SERVER_URL points at."""
        return f"{self.base}/webhook"

    def start(self) -> None:
        self.start_listening(self.port)

    def connection(self, context: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
        context = context or self.client_context
        if context is None:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        return http.client.HTTPSConnection("localhost", self.port, timeout=10, context=context)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        context: ssl.SSLContext | None = None,
    ) -> Answer:
        """One request on a fresh connection, so each one sees whether the sink is listening."""
        connection = self.connection(context)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return Answer(response.status, response.headers, response.read())
        finally:
            connection.close()

    def deliver(self, message_id: str, body: bytes = b"{}", attempt: int = 1) -> Answer:
        return self.request("POST", "/hooks", body, {"X-Message-Id": message_id, "X-Attempt": str(attempt)})

    def post_json(self, path: str, payload: Any) -> Answer:
        return self.request("POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def stats(self) -> dict[str, int]:
        answer = self.request("GET", "/stats")
        assert answer.status == 200, answer
        return answer.json()  # type: ignore[no-any-return]

    def faults(self, **faults: Any) -> None:
        answer = self.post_json("/faults", faults)
        assert answer.status == 200, answer.body

    def message(self, message_id: str) -> Answer:
        return self.request("GET", f"/messages/{message_id}")


class Proxy(FerryProcess):
    """`ferry proxy` over HTTPS (or HTTP), and a client that speaks to it with an API key."""

    def __init__(
        self,
        directory: Path,
        redis_url: str,
        certs: CertFiles | None,
        args: list[str],
        env: dict[str, str],
        api_key: str = "test-key",
    ) -> None:
        self.port = free_port()
        self.certs = certs
        self.api_key = api_key
        tls = ["--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key)] if certs else []
        base_env = {"REDIS_URL": redis_url, "FERRY_API_KEYS": api_key, "LOG_LEVEL": "WARNING"}
        super().__init__(
            ["proxy", "--port", str(self.port), *tls, *args],
            {**base_env, **env},
            directory / f"proxy-{self.port}.log",
        )

    @property
    def base(self) -> str:
        return f"{'https' if self.certs else 'http'}://localhost:{self.port}"

    def context(self, client_cert: tuple[Path, Path] | None = None) -> ssl.SSLContext | None:
        if self.certs is None:
            return None
        context = ssl.create_default_context(cafile=str(self.certs.ca))
        if client_cert is not None:
            context.load_cert_chain(*client_cert)
        return context

    def start(self) -> None:
        self.start_listening(self.port)  # uvicorn listens once the app has started

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        *,
        key: str | None = "",
        client_cert: tuple[Path, Path] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """One request on a new connection; `key=None` sends no Authorization header."""
        connection: http.client.HTTPConnection
        if self.certs is None:
            connection = http.client.HTTPConnection("localhost", self.port, timeout=30)
        else:
            connection = http.client.HTTPSConnection(
                "localhost", self.port, timeout=30, context=self.context(client_cert)
            )
        sent = dict(headers or {})
        if key is not None:
            sent["Authorization"] = f"Bearer {key or self.api_key}"
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            raw = response.read()
            answer_headers = {name.lower(): value for name, value in response.getheaders()}
        finally:
            connection.close()
        if answer_headers.get("content-type", "").startswith("application/json"):
            return response.status, answer_headers, json.loads(raw)
        return response.status, answer_headers, raw

    def raw_request(self, method: str, path: str, headers: list[tuple[str, bytes]], body: bytes = b"") -> tuple[int, Any]:
        """A request whose header lines go out exactly as given, repeated ones too (the
        `request` above takes a dict, and http.client would re-encode values); JSON back."""
        assert self.certs is not None, "raw requests go over TLS"
        connection = http.client.HTTPSConnection("localhost", self.port, context=self.context(), timeout=10)
        try:
            connection.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers:
                connection.putheader(name, value)
            connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def post(self, body: bytes, content_type: str = "application/json", **headers: str) -> tuple[int, dict[str, str], Any]:
        sent = {"Content-Type": content_type, **{k.replace("_", "-"): v for k, v in headers.items()}}
        return self.request("POST", "/api/v1/messages", body, sent)
