"""`ferry send` against a real proxy over TLS, a real worker and the sink: what a user
at a terminal sees (the id, the outcome, one line when it fails) and what arrives."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from ferry.cli import app
from tests.conftest import TEST_WORKER_ENV
from tests.support.certs import CertFiles
from tests.support.processes import FerryProcess, Proxy, Sink, bare_env, ferry_command
from tests.support.servers import RedisProcess


@dataclass(frozen=True)
class Stack:
    proxy: Proxy
    sink: Sink
    home: Path  # as `ferry up` leaves FERRY_HOME: tls/ca.pem and api-key

    def target(self) -> list[str]:
        """The flags that name this proxy explicitly (instead of FERRY_HOME's defaults)."""
        return ["--url", self.proxy.base, "--api-key", self.proxy.api_key, "--ca-file", str(self.proxy.certs.ca)]  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def stack(default_server: RedisProcess, certs: CertFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("send")
    default_server.client().flushall()
    sink = Sink(directory, certs)
    proxy = Proxy(directory, default_server.url, certs, [], {})
    worker = FerryProcess(
        ["worker"],
        {
            "REDIS_URL": default_server.url,
            "MAIN_SERVER_URL": sink.url,
            "MAIN_SERVER_CA_FILE": str(certs.ca),
            "WORKER_METRICS_PORT": "0",
            "FERRY_HOME": str(directory / "worker-home"),
            **TEST_WORKER_ENV,
        },
        directory / "worker.log",
    )
    home = directory / "home"
    (home / "tls").mkdir(parents=True)
    shutil.copy(certs.ca, home / "tls" / "ca.pem")
    (home / "api-key").write_text(proxy.api_key + "\n")
    try:
        sink.start()
        proxy.start()
        worker.start()
        yield Stack(proxy, sink, home)
    finally:
        worker.stop()
        proxy.stop()
        sink.kill()


def send(stack: Stack, *args: str, stdin: bytes = b"", **env: str) -> subprocess.CompletedProcess[str]:
    """`ferry send` as a user runs it, with FERRY_HOME and PROXY_PORT as `ferry up` left them."""
    environment = bare_env(**({"FERRY_HOME": str(stack.home), "PROXY_PORT": str(stack.proxy.port)} | env))
    return subprocess.run(
        [ferry_command(), "send", *args], input=stdin.decode(), env=environment, capture_output=True, text=True, timeout=60
    )


def delivered(stack: Stack, message_id: str) -> tuple[bytes, str]:
    answer = stack.sink.message(message_id)
    assert answer.status == 200, answer
    return answer.body, answer.headers["Content-Type"]


def test_send_finds_ferry_ups_proxy_key_and_ca_and_waits_until_delivered(stack: Stack) -> None:
    sent = send(stack, '{"hello": "ferry"}', "--wait")
    assert sent.returncode == 0, sent.stderr
    message_id, outcome = sent.stdout.splitlines()
    assert outcome == "delivered after 1 attempt"
    assert delivered(stack, message_id) == (b'{"hello": "ferry"}', "application/json")


def test_file_and_stdin_bodies_arrive_byte_for_byte_with_their_type(stack: Stack, tmp_path: Path) -> None:
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x00\xff\xfe ferry")
    by_file = send(stack, "--file", str(binary), "--wait", *stack.target())
    by_stdin = send(stack, "-", "--wait", *stack.target(), stdin=b"plain words\n")
    typed = send(stack, "a,b\n1,2\n", "--content-type", "text/csv", "--wait", *stack.target())
    for result in (by_file, by_stdin, typed):
        assert result.returncode == 0, result.stderr
    assert delivered(stack, by_file.stdout.split()[0]) == (b"\x00\xff\xfe ferry", "application/octet-stream")
    assert delivered(stack, by_stdin.stdout.split()[0]) == (b"plain words\n", "text/plain; charset=utf-8")
    assert delivered(stack, typed.stdout.split()[0]) == (b"a,b\n1,2\n", "text/csv")


def test_the_same_idempotency_key_answers_the_first_id_and_stores_nothing_more(stack: Stack) -> None:
    first = send(stack, '{"order": 7}', "--idempotency-key", "order-7", "--wait")
    again = send(stack, '{"order": 7}', "--idempotency-key", "order-7")
    assert first.returncode == again.returncode == 0, (first.stderr, again.stderr)
    message_id = first.stdout.split()[0]
    assert again.stdout.strip() == message_id
    assert stack.sink.message(message_id).headers["X-Sink-Deliveries"] == "1"


def test_wait_on_a_refused_message_exits_1_with_its_last_error(stack: Stack) -> None:
    stack.sink.faults(fail_rate=1, status=400)  # as `ferry sink --status 400 --fail-rate 1`
    try:
        sent = send(stack, "doomed", "--wait", "--timeout", "20")
    finally:
        stack.sink.faults(fail_rate=0)
    assert sent.returncode == 1
    assert len(sent.stdout.split()) == 1  # the id, and nothing else on stdout
    assert sent.stderr.startswith("ferry: dead after 1 attempt: ") and "400" in sent.stderr
    assert len(sent.stderr.splitlines()) == 1


def test_a_proxy_lost_while_waiting_says_the_message_was_stored_and_exits_1(
    stack: Stack, default_server: RedisProcess, tmp_path: Path
) -> None:
    # Exit 2 says "nothing stored": a message already answered 202 must never be reported so.
    second = Proxy(tmp_path, default_server.url, stack.proxy.certs, [], {})
    second.start()
    stack.sink.faults(fail_rate=1, status=503)  # it stays retrying, so the wait goes on
    try:
        command = [ferry_command(), "send", "kept", "--wait", "--timeout", "30", "--url", second.base]
        command += ["--api-key", second.api_key, "--ca-file", str(stack.proxy.certs.ca)]  # type: ignore[union-attr]
        waiting = subprocess.Popen(command, env=bare_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert waiting.stdout is not None
        message_id = waiting.stdout.readline().strip()
        second.kill()
        out, err = waiting.communicate(timeout=30)
    finally:
        stack.sink.faults(fail_rate=0)
    assert waiting.returncode == 1, err
    assert out == "" and err.startswith("ferry: stored, but its status cannot be followed: ")
    status, _, found = stack.proxy.request("GET", f"/api/v1/messages/{message_id}")
    assert status == 200 and found["status"] in {"queued", "delivering", "retrying", "delivered"}


def test_nothing_sent_is_one_line_with_the_proxys_code_and_exit_2(stack: Stack, tmp_path: Path) -> None:
    # In this process (the console script's start-up is tested above): the same command, exit code and stderr.
    def run(*args: str, home: Path = stack.home) -> Result:
        env = {"FERRY_HOME": str(home), "PROXY_PORT": str(stack.proxy.port)}
        return CliRunner().invoke(app, ["send", *args], env=env)

    refusals = {
        "ferry: 401 unauthorized: ": run("{}", "--api-key", "not-a-key"),
        "ferry: 422 invalid_request: Idempotency-Key": run("{}", "--idempotency-key", "bad\tkey"),
        "ferry: cannot reach the proxy at https://127.0.0.1:1: Connection refused": run("{}", "--url", "https://127.0.0.1:1"),
        "ferry: cannot reach the proxy at ": run("{}", "--ca-file", str(stack.proxy.certs.other_ca)),  # type: ignore[union-attr]
        "ferry: give the body as an argument": run(),
        "ferry: cannot read ": run("--file", str(tmp_path / "missing.json")),
        "ferry: no API key: ": run("{}", home=tmp_path),
    }
    for start, result in refusals.items():
        assert (result.exit_code, result.stdout) == (2, ""), (start, result.output)
        assert result.stderr.startswith(start) and len(result.stderr.splitlines()) == 1, (start, result.stderr)
    assert "certificate is not trusted" in refusals["ferry: cannot reach the proxy at "].stderr
