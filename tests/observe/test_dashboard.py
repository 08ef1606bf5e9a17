"""The live dashboard in Debian's headless Chromium (driven by Playwright, never its own
browsers): a real proxy over TLS, two real workers and the sink on Valkey. The page
asks for the admin key, lists the workers, and its numbers move while messages flow;
`ferry dashboard` serves the same page from Redis alone. Any console error or failed
request fails the test; each run keeps a screenshot in artifacts/ at the repository root.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, Request, Response, sync_playwright

from tests.conftest import TEST_WORKER_ENV
from tests.support.certs import CertFiles
from tests.support.processes import FerryProcess, Proxy, Sink, ferry_command, wait_until
from tests.support.servers import RedisProcess, free_port

ADMIN_KEY = "dashboard-admin-key"
WORKER_IDS = ("worker-a", "worker-b")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@dataclass
class Stack:
    proxy: Proxy
    sink: Sink
    redis_url: str


@pytest.fixture(scope="module")
def stack(default_server: RedisProcess, certs: CertFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("dashboard")
    default_server.client().flushall()
    sink = Sink(directory, certs, ["--latency-ms", "20"])  # deliveries take time: active tasks show
    proxy = Proxy(directory, default_server.url, certs, [], {"FERRY_ADMIN_API_KEYS": ADMIN_KEY})
    workers = [
        FerryProcess(
            ["worker"],
            {
                "REDIS_URL": default_server.url,
                "MAIN_SERVER_URL": sink.url,
                "MAIN_SERVER_CA_FILE": str(certs.ca),
                "WORKER_ID": worker_id,
                "WORKER_METRICS_PORT": str(free_port()),
                "FERRY_HOME": str(directory / worker_id),
                **TEST_WORKER_ENV,
            },
            directory / f"{worker_id}.log",
        )
        for worker_id in WORKER_IDS
    ]
    try:
        sink.start()
        proxy.start()
        for worker in workers:
            worker.start()
        yield Stack(proxy, sink, default_server.url)
    finally:
        for worker in workers:
            worker.stop()
        proxy.stop()
        sink.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (apt-get install chromium; .ci/run installs it)"
    with sync_playwright() as playwright:
        yield launch(playwright, chromium)


def launch(playwright: Playwright, executable: str) -> Browser:
    return playwright.chromium.launch(executable_path=executable, headless=True)


@dataclass
class Watched:
    """A page, and every console error, uncaught exception and failed request it had."""

    page: Page
    problems: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.problems == [], self.problems


def open_page(browser: Browser, url: str) -> Watched:
    # The proxy's certificate is signed by the tests' CA, which this browser does not know.
    page = browser.new_context(ignore_https_errors=True).new_page()
    watched = Watched(page)

    def console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            watched.problems.append(f"console {message.type}: {message.text}")

    def failed(request: Request) -> None:
        watched.problems.append(f"request failed: {request.url} {request.failure}")

    def answered(response: Response) -> None:
        if response.status >= 400:
            watched.problems.append(f"{response.status} for {response.url}")

    page.on("console", console)
    page.on("pageerror", lambda error: watched.problems.append(f"page error: {error}"))
    page.on("requestfailed", failed)
    page.on("response", answered)
    page.goto(url)
    return watched


def sign_in(page: Page, key: str) -> None:
    page.fill("#key", key)
    page.click("#key-form button[type=submit]")


def listed_workers(page: Page) -> list[str]:
    return page.eval_on_selector_all("#workers tbody tr", "rows => rows.map(row => row.dataset.workerId)")


def number(page: Page, selector: str) -> float:
    text = page.inner_text(selector)
    return float(text) if re.fullmatch(r"[0-9.]+", text) else -1.0


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


class Load:
    """Messages sent to the proxy from a thread, as a client would, until stopped."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.stopped = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stopped.is_set():
            code, _, _ = self.proxy.post(b'{"from": "the dashboard test"}')
            assert code == 202
            self.sent += 1
            self.stopped.wait(0.01)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopped.set()
        self.thread.join(10)


def test_the_proxys_page_asks_for_the_admin_key_lists_the_workers_and_moves_with_the_traffic(
    stack: Stack, browser: Browser
) -> None:
    watched = open_page(browser, stack.proxy.base + "/dashboard")
    page = watched.page
    headers = page.request.get(stack.proxy.base + "/dashboard").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert page.is_visible("#key-form") and not page.is_visible("#board")

    sign_in(page, ADMIN_KEY)
    wait_until(lambda: sorted(listed_workers(page)) == sorted(WORKER_IDS), timeout=20)
    delivered_before = number(page, "#delivered-total")
    with Load(stack.proxy):
        wait_until(lambda: number(page, "#rate-in") > 0 and number(page, "#rate-out") > 0, timeout=15)
        wait_until(lambda: number(page, "#delivered-total") >= delivered_before + 20, timeout=15)
        # Each worker's throughput bar has a rate, and the proxy's p95 is read from /metrics.
        wait_until(lambda: all(cell != "-" for cell in page.eval_on_selector_all(
            "#workers tbody tr td:nth-child(4)", "cells => cells.map(cell => cell.textContent)")), timeout=15)
        wait_until(lambda: page.inner_text("#proxy-p95").endswith(" ms"), timeout=15)
        screenshot(page, "dashboard-proxy.png")
    assert page.eval_on_selector("#chart canvas", "canvas => canvas.width") > 0
    assert ADMIN_KEY not in page.url

    page.reload()  # the key stays in this tab's sessionStorage: no second prompt
    wait_until(lambda: len(listed_workers(page)) == len(WORKER_IDS), timeout=10)
    assert not page.is_visible("#key-form")
    watched.assert_clean()


def test_a_wrong_key_is_refused_and_asked_for_again(stack: Stack, browser: Browser) -> None:
    watched = open_page(browser, stack.proxy.base + "/dashboard")
    sign_in(watched.page, "not-an-admin-key")
    wait_until(lambda: watched.page.inner_text("#key-error") == "a valid admin key is required", timeout=10)
    assert watched.page.is_visible("#key-form") and not watched.page.is_visible("#board")
    assert watched.page.evaluate("sessionStorage.length") == 0
    assert any(problem.startswith("401 for") for problem in watched.problems)  # the refused read, nothing else
    assert all("401" in problem for problem in watched.problems), watched.problems


def test_ferry_dashboard_serves_the_same_page_from_redis_alone(
    stack: Stack, browser: Browser, tmp_path: Path
) -> None:
    port = free_port()
    env = {"REDIS_URL": stack.redis_url, "FERRY_HOME": str(tmp_path)}
    server = FerryProcess(["dashboard", "--port", str(port)], env, tmp_path / "dashboard.log")
    server.start_listening(port)
    try:
        printed = wait_until(lambda: re.search(r"admin key\s+(\S+)", server.log()), timeout=10)
        watched = open_page(browser, f"http://127.0.0.1:{port}/dashboard")
        sign_in(watched.page, printed.group(1))
        wait_until(lambda: sorted(listed_workers(watched.page)) == sorted(WORKER_IDS), timeout=15)
        assert watched.page.inner_text("#proxy-p95") == "n/a"  # no proxy here to time
        screenshot(watched.page, "dashboard-standalone.png")
        watched.assert_clean()
    finally:
        server.stop()
    busy = subprocess.run(
        [ferry_command(), "dashboard", "--port", str(stack.proxy.port)],
        env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=30,
    )
    assert (busy.returncode, busy.stderr.startswith(f"ferry: cannot listen on 127.0.0.1:{stack.proxy.port}")) == (2, True)
