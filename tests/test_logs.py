"""One log format per process: what a log shipper reading ferry's stderr parses."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

from tests.support.processes import Proxy


def test_a_proxy_logs_json_lines_only_uvicorns_own_lines_too(redis_url: str, start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(redis_url, "--workers", "2", LOG_LEVEL="INFO")
    proxy.signal(signal.SIGTERM)
    assert proxy.wait(timeout=30) == 0
    lines = [line for line in proxy.log().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # a plain "INFO:     Started ..." line fails here
    assert {"proxy listening"} <= {entry["event"] for entry in parsed}
    uvicorns = [entry for entry in parsed if entry.get("logger", "").startswith("uvicorn")]
    assert any("Started parent process" in entry["event"] or "Started server process" in entry["event"] for entry in uvicorns), lines
    assert all({"level", "timestamp"} <= entry.keys() for entry in parsed)
