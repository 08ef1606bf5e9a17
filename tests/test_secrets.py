"""Secrets stay secret: no API key, admin key, signing secret, Redis password or URL token
is in any message, log line, HTTP answer or child process's environment.

Every secret setting gets a distinct, recognisable value; each test drives error paths
(bad settings, Redis down or refusing writes under the proxy, a main server that refuses
connections, answers what is not HTTP or answers 500 echoing what it was sent, `ferry
dead list` with Redis down) and greps everything it can read for any of them. Only the
environment the user gave (the started command's own) may hold them.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ferry.settings import Settings
from ferry.worker.delivery import chosen_client
from tests.support.certs import CertFiles
from tests.support.processes import FerryProcess, Proxy, bare_env, ferry_command, wait_until
from tests.support.servers import RedisProcess, free_port, free_port_range

API_KEY = "apikey-SECRET-4f1c9a7e"
ADMIN_KEY = "adminkey-SECRET-8b2d6e0f"
SIGNING_SECRET = "whsec_" + base64.b64encode(b"signing-SECRET-3a5c7e9b").decode()
REDIS_PASSWORD = "redispw-SECRET-1d3f5b7a"
TOKEN = "token-SECRET-9e7c5a3b"
SECRETS = [API_KEY, ADMIN_KEY, SIGNING_SECRET, SIGNING_SECRET.removeprefix("whsec_"), REDIS_PASSWORD, TOKEN]


def assert_no_secret(where: str, text: str | bytes) -> None:
    shown = text.decode(errors="replace") if isinstance(text, bytes) else text
    for secret in SECRETS:
        assert secret not in shown, f"{where} holds the secret {secret!r}:\n{shown[:2000]}"


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """Valkey with `requirepass`: REDIS_URL carries the password."""
    server = RedisProcess("valkey", tmp_path / "locked-redis", appendfsync="everysec", password=REDIS_PASSWORD)
    server.start()
    yield server
    server.kill()


def secret_env(redis_url: str, main_server_url: str) -> dict[str, str]:
    """Every secret setting, as a user sets them in the environment."""
    return {
        "FERRY_API_KEYS": API_KEY,
        "FERRY_ADMIN_API_KEYS": ADMIN_KEY,
        "FERRY_SIGNING_SECRET": SIGNING_SECRET,
        "REDIS_URL": redis_url,
        "MAIN_SERVER_URL": main_server_url,
    }


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def assert_environments_clean(pid: int, at_least: int) -> list[int]:
    """No descendant of `pid` has a secret in its environment; returns them.

    A child forked but not yet running its own program still holds a copy of its parent's
    environment and command line (seen under load): it is read once it has exec'd."""
    pids = wait_until(lambda: (found := descendants(pid)) and len(found) >= at_least and found)
    started = Path(f"/proc/{pid}/cmdline").read_bytes()  # the user's command: its environment is theirs
    for child in pids:
        try:  # a copy of the started command that never execs would hold the secrets: it fails here
            [cmdline] = wait_until(lambda c=child: [line] if (line := Path(f"/proc/{c}/cmdline").read_bytes())
                                   != started else None, timeout=10)
            environ = Path(f"/proc/{child}/environ").read_bytes()
        except OSError:
            continue  # gone meanwhile
        assert_no_secret(f"/proc/{child}/environ ({cmdline!r})", environ.replace(b"\0", b"\n"))
        assert_no_secret(f"/proc/{child}/cmdline", cmdline)
    return pids


def test_redacted_url_drops_the_password_and_query_string() -> None:
    from ferry.settings import redacted_url, scrub

    assert redacted_url(f"redis://:{REDIS_PASSWORD}@cache:6379/2") == "redis://:***@cache:6379/2"
    assert redacted_url(f"rediss://ferry:{REDIS_PASSWORD}@cache/0?ssl_cert_reqs=none") == "rediss://ferry:***@cache/0"
    assert redacted_url(f"https://hooks.example/in?token={TOKEN}#x") == "https://hooks.example/in"
    assert redacted_url(f"{TOKEN}@hooks.example") == "***@hooks.example"
    assert redacted_url("localhost:6379") == "localhost:6379"
    url = f"https://hooks.example/in?token={TOKEN}"
    assert scrub(f"400, url='{url}', echo /in?token={TOKEN}", url) == "400, url='https://hooks.example/in', echo /in?***"


BAD_SETTINGS: list[tuple[str, dict[str, str], str]] = [
    ("FERRY_SIGNING_SECRET", {"FERRY_SIGNING_SECRET": f"not-{SIGNING_SECRET}"}, ""),
    ("REDIS_URL", {"REDIS_URL": f"http://:{REDIS_PASSWORD}@127.0.0.1:1/0?token={TOKEN}"}, ""),
    ("MAIN_SERVER_URL", {"MAIN_SERVER_URL": f"ftp://ferry:{REDIS_PASSWORD}@main.example/in?token={TOKEN}"}, ""),
    # A string setting refuses no string: a list in ferry.toml is its bad value.
    ("FERRY_API_KEYS", {}, f'ferry_api_keys = ["{API_KEY}"]\n'),
    ("FERRY_ADMIN_API_KEYS", {}, f'ferry_admin_api_keys = ["{ADMIN_KEY}"]\n'),
]


@pytest.mark.parametrize(("variable", "env", "toml"), BAD_SETTINGS, ids=[case[0] for case in BAD_SETTINGS])
def test_a_bad_secret_setting_is_named_but_never_shown(
    variable: str, env: dict[str, str], toml: str, tmp_path: Path
) -> None:
    (tmp_path / "ferry.toml").write_text(toml)
    given = {"MAIN_SERVER_URL": "https://main.example/in", **env}
    done = subprocess.run(
        [ferry_command(), "worker"], env=bare_env(**given), cwd=tmp_path, capture_output=True, timeout=60
    )
    assert done.returncode == 2, done
    assert done.stderr.decode().startswith(f"ferry: invalid setting {variable}: "), done.stderr
    assert_no_secret(f"the error of a bad {variable}", done.stdout + done.stderr)


def test_dead_list_with_redis_down_shows_the_url_redacted(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    done = subprocess.run(
        [ferry_command(), "dead", "list"], env=bare_env(REDIS_URL=url), cwd=tmp_path, capture_output=True, timeout=60
    )
    assert done.returncode == 2, done
    assert f"Redis at redis://:***@127.0.0.1:{port}/0 does not answer" in done.stderr.decode(), done.stderr
    assert_no_secret("ferry dead list's error", done.stdout + done.stderr)


@pytest.fixture
def start_secret_proxy(tmp_path: Path, certs: CertFiles) -> Iterator[Callable[..., Proxy]]:
    proxies: list[Proxy] = []

    def start(redis_url: str, *args: str, **env: str) -> Proxy:
        given = secret_env(redis_url, f"https://main.example/in?token={TOKEN}") | {"LOG_LEVEL": "INFO"} | env
        proxy = Proxy(tmp_path, redis_url, certs, list(args), given, api_key=API_KEY)
        proxies.append(proxy)
        proxy.start()
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()
        assert_no_secret("the proxy's log", proxy.log())


def test_the_proxys_processes_inherit_no_secret(locked_redis: RedisProcess, start_secret_proxy: Callable[..., Proxy]) -> None:
    proxy = start_secret_proxy(locked_redis.url, "--workers", "2")
    status, _, answer = proxy.post(b"{}")
    assert status == 202, answer  # the URL's password reached the uvicorn processes
    children = assert_environments_clean(proxy.pid, at_least=2)
    assert len(children) >= 2
    assert proxy.request("GET", "/api/v1/dead-letters", key=ADMIN_KEY)[0] == 200  # so did the admin key


def _checked(what: str, answer: tuple[int, dict[str, str], Any], port: int) -> dict[str, Any]:
    status, headers, body = answer
    shown = json.dumps({"status": status, "headers": headers, "body": body if isinstance(body, dict) else repr(body)})
    assert_no_secret(what, shown)
    assert f"127.0.0.1:{port}" not in shown and str(port) not in json.dumps(body), f"{what} names Redis: {shown}"
    assert isinstance(body, dict), shown
    return body


def test_503_bodies_say_what_happened_and_not_where_redis_is(
    locked_redis: RedisProcess, start_secret_proxy: Callable[..., Proxy]
) -> None:
    proxy = start_secret_proxy(locked_redis.url)
    status, _, sent = proxy.post(b"{}")
    assert status == 202
    port = locked_redis.port
    locked_redis.kill()
    batch = json.dumps({"messages": [{"json": {}}]}).encode()
    answers = {
        "POST message": proxy.post(b"{}"),
        "POST batch": proxy.request("POST", "/api/v1/messages/batch", batch, {"Content-Type": "application/json"}),
        "GET status": proxy.request("GET", f"/api/v1/messages/{sent['id']}"),
        "GET health": proxy.request("GET", "/api/v1/health"),
        "GET dead letters": proxy.request("GET", "/api/v1/dead-letters", key=ADMIN_KEY),
    }
    for what, answer in answers.items():
        body = _checked(what, answer, port)
        assert answer[0] == 503 and body["error"] == "redis_unavailable", (what, answer)
        assert "Redis is unavailable" in body["detail"], (what, body)
    assert "Connect" in proxy.log() or "connect" in proxy.log()  # the details went to the log

    locked_redis.start()  # same port; now it answers but refuses writes
    client = locked_redis.client()
    client.config_set("maxmemory", 1)
    try:
        answer = wait_until(lambda: (found := proxy.post(b"{}"))[0] != 503 or found[2]["error"] != "redis_unavailable" and found)
        body = _checked("POST while Redis refuses writes", answer, port)
        assert answer[0] == 503 and body["error"] == "redis_refusing_writes", answer
        assert body["detail"].startswith("Redis refuses writes, nothing was stored: OOM "), body
    finally:
        client.config_set("maxmemory", 0)
        client.close()


class MainServer(socketserver.ThreadingTCPServer):
    """A main server on a fixed port whose answer the test sets: not HTTP, or a 500 that
    echoes the request line (as many frameworks' error pages do), token and all."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, port: int) -> None:
        self.mode = "garbage"
        super().__init__(("127.0.0.1", port), MainServerHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class MainServerHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        assert isinstance(self.server, MainServer)
        sock: socket.socket = self.request
        sock.settimeout(5)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                return
            head += chunk
        if self.server.mode == "garbage":
            sock.sendall(b"garbage\r\n\r\n")
            return
        request_line = head.split(b"\r\n", 1)[0]
        body = b"no route for " + request_line
        sock.sendall(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )


def test_delivery_errors_worker_logs_and_worker_environments_hold_no_secret(
    tmp_path: Path, locked_redis: RedisProcess, start_secret_proxy: Callable[..., Proxy]
) -> None:
    main_port = free_port()
    main_url = f"http://127.0.0.1:{main_port}/hook?token={TOKEN}"
    proxy = start_secret_proxy(locked_redis.url)
    env = secret_env(locked_redis.url, main_url) | {
        "WORKER_RETRY_INTERVAL": "0.2",
        "FERRY_LEASE_SECONDS": "2",
        "LOG_LEVEL": "INFO",
        "FERRY_HOME": str(tmp_path / "home"),
    }
    base = free_port_range(1)
    workers = FerryProcess(
        ["workers", "start", "--num-workers", "1", "--base-metrics-port", str(base)], env, tmp_path / "workers.log"
    )
    workers.start()
    server: MainServer | None = None
    try:
        assert_environments_clean(workers.pid, at_least=1)
        status, _, sent = proxy.post(b'{"hello": "ferry"}')
        assert status == 202

        def last_error(starting: str) -> str | None:
            found = proxy.request("GET", f"/api/v1/messages/{sent['id']}")
            assert found[0] == 200, found
            error = found[2]["last_error"] or ""
            return error if error.startswith(starting) else None

        # Each client's names for: connection refused, and an answer that is not HTTP (the URL in it).
        client = chosen_client(Settings(MAIN_SERVER_URL=main_url))  # type: ignore[call-arg]
        refused, garbled = {"aiohttp": ("ClientConnectorError", "ClientResponseError"),
                            "pyreqwest": ("ConnectError", "DecodeError")}[client]
        seen = [wait_until(lambda: last_error(refused))]
        server = MainServer(main_port)
        seen.append(wait_until(lambda: last_error(garbled)))
        server.mode = "500"
        seen.append(wait_until(lambda: last_error("HTTP 500")))  # the main server echoes the URL
        assert "no route for POST /hook" in seen[-1]
        for error in seen:
            assert_no_secret("a message's last_error", error)
        assert_environments_clean(workers.pid, at_least=1)
    finally:
        workers.stop()
        if server is not None:
            server.shutdown()
            server.server_close()
    log = workers.log()
    assert "delivery failed, will retry" in log and "HTTP 500" in log
    assert_no_secret("the workers' log", log)


def test_ferry_ups_children_inherit_no_secret(tmp_path: Path, locked_redis: RedisProcess) -> None:
    home = tmp_path / "home"
    proxy_port, main_port, metrics_port = free_port(), free_port(), free_port_range(1)
    env = secret_env(locked_redis.url, f"http://127.0.0.1:{main_port}/hook?token={TOKEN}") | {
        "FERRY_HOME": str(home),
        "PROXY_PORT": str(proxy_port),
        "LOG_LEVEL": "INFO",
    }
    up = FerryProcess(
        ["up", "--workers", "1", "--proxy-workers", "2", "--base-metrics-port", str(metrics_port)],
        env,
        tmp_path / "up.log",
    )
    up.start()
    try:
        block = wait_until(lambda: "send one" in (log := up.log()) and log, timeout=90)
        assert f"main server   http://127.0.0.1:{main_port}/hook\n" in block  # redacted
        # Valkey is the user's, the sink is not started: proxy, its 2 processes (and
        # multiprocessing's resource tracker), the worker.
        assert_environments_clean(up.pid, at_least=4)
        context = ssl.create_default_context(cafile=str(home / "tls" / "ca.pem"))
        connection = http.client.HTTPSConnection("127.0.0.1", proxy_port, timeout=10, context=context)
        connection.request("POST", "/api/v1/messages", b"{}", {"Authorization": f"Bearer {API_KEY}"})
        assert connection.getresponse().status == 202  # the proxy got its API key through the pipe
        connection.close()
    finally:
        up.stop()
    # The ready block shows the API key on purpose (the user needs it for curl); nothing else may.
    log = up.log().replace(f"API key       {API_KEY}", "").replace(f"Bearer {API_KEY}", "")
    assert_no_secret("ferry up's log", log)
