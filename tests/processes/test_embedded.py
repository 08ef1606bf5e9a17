"""The embedded Valkey: what a fresh laptop without Redis runs."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import redis

from ferry.processes.embedded import EmbeddedValkey, start_or_share
from tests.support.inspect import enqueue, queue_length
from tests.support.processes import FerryProcess, Sink, wait_until


def test_embedded_valkey_persists_queued_messages_across_restarts(tmp_path: Path) -> None:
    url, owner = start_or_share(tmp_path / "home")
    assert owner is not None
    try:
        config = redis.Redis.from_url(url).config_get("*")
        assert (config["appendonly"], config["appendfsync"], config["maxmemory-policy"]) == (
            "yes", "everysec", "noeviction",
        )
        enqueue(url, [b"a", b"b", b"c"])
    finally:
        owner.stop()
    assert EmbeddedValkey(tmp_path / "home").running_url() is None

    url, owner = start_or_share(tmp_path / "home")
    assert owner is not None
    try:
        assert queue_length(url) == 3
    finally:
        owner.stop()


def test_processes_of_one_home_share_one_server(tmp_path: Path) -> None:
    url, owner = start_or_share(tmp_path / "home")
    try:
        same_url, second_owner = start_or_share(tmp_path / "home")
        assert (same_url, second_owner) == (url, None)
    finally:
        assert owner is not None
        owner.stop()


def test_worker_without_redis_url_runs_and_stops_embedded_valkey(
    tmp_path: Path, start_sink: Callable[..., Sink], start_worker: Callable[..., FerryProcess]
) -> None:
    sink = start_sink()
    worker = start_worker("", sink.url, FERRY_HOME=str(tmp_path / "laptop"))
    embedded = EmbeddedValkey(tmp_path / "laptop")
    url = wait_until(embedded.running_url)
    assert url.startswith("unix://")

    enqueue(url, [b"hello"])
    wait_until(lambda: sink.stats()["unique"] == 1)
    worker.signal_group(signal.SIGINT)  # Ctrl-C: the embedded server must not stop first
    assert worker.wait(timeout=20) == 0
    assert "worker stopped" in worker.log() and "redis unavailable" not in worker.log()
    assert embedded.running_url() is None  # stopped with the process that started it


def test_a_sigkilled_owner_leaves_valkey_running_and_the_next_process_reuses_it(
    tmp_path: Path, start_sink: Callable[..., Sink], start_worker: Callable[..., FerryProcess]
) -> None:
    sink = start_sink()
    home = tmp_path / "laptop"
    owner = start_worker("", sink.url, FERRY_HOME=str(home), WORKER_ID="owner")
    url = wait_until(EmbeddedValkey(home).running_url)
    enqueue(url, [b"kept"])
    wait_until(lambda: sink.stats()["unique"] == 1)
    owner.kill()

    assert EmbeddedValkey(home).running_url() == url  # no second server on the same data
    same_url, new_owner = start_or_share(home)
    assert (same_url, new_owner) == (url, None)
    redis.Redis.from_url(url).shutdown(nosave=False)
