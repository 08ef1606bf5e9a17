"""The embedded Valkey: what a fresh laptop without Redis runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from ferry.processes import embedded
from ferry.processes.embedded import EmbeddedValkey, start_or_share
from ferry.queue.connection import LISTPACK_VALUE_BYTES
from tests.support.inspect import enqueue, queue_length, status
from tests.support.processes import FerryProcess, Sink, ferry_command, wait_until
from tests.support.stored_before import encodings, store_in_every_state


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


def test_embedded_valkey_keeps_a_message_of_up_to_4_kib_in_a_listpack(tmp_path: Path) -> None:
    url, owner = start_or_share(tmp_path / "home")
    assert owner is not None
    try:
        server = redis.Redis.from_url(url)
        [small, largest] = enqueue(url, [b"x" * 500, b"x" * LISTPACK_VALUE_BYTES])
        for message_id, body_bytes in ((small, 500), (largest, LISTPACK_VALUE_BYTES)):
            key = f"{{message_queue}}:msg:{message_id}"
            assert server.object("encoding", key) == b"listpack"
            # The hashtable of a server at Redis's default takes about 400 bytes more (docs/storage.md).
            assert server.memory_usage(key, samples=0) < body_bytes + 350
    finally:
        owner.stop()


def test_messages_an_older_embedded_valkey_kept_are_delivered_and_replayed_after_the_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    start_sink: Callable[..., Sink], start_worker: Callable[..., FerryProcess],
) -> None:
    home = tmp_path / "laptop"
    with monkeypatch.context() as before_this_version:  # ferry up's Valkey had Redis's default limit
        before_this_version.setattr(embedded, "STORAGE", [])
        url, owner = start_or_share(home)
        assert owner is not None
        stored = store_in_every_state(redis.Redis.from_url(url))
        assert encodings(redis.Redis.from_url(url), stored) == {"hashtable"}
        owner.stop()
    url, owner = start_or_share(home)  # this version's: the AOF is read into listpacks
    assert owner is not None
    assert encodings(redis.Redis.from_url(url), stored) == {"listpack"}
    owner.stop()

    sink = start_sink()
    worker = start_worker("", sink.url, FERRY_HOME=str(home))
    ids = stored.ids
    waiting = [ids["queued"], ids["delivering"], ids["retrying"]]
    wait_until(lambda: all(sink.message(i).status == 200 for i in waiting))
    env = {**os.environ, "FERRY_HOME": str(home)}
    env.pop("REDIS_URL", None)
    listed = subprocess.run([ferry_command(), "dead", "list", "--json"], env=env, capture_output=True,
                            text=True, timeout=60, check=True)
    [dead] = json.loads(listed.stdout)["dead_letters"]
    assert (dead["id"], dead["attempts"], dead["last_error"]) == (ids["dead"], 1, "HTTP 422: refused")
    subprocess.run([ferry_command(), "dead", "replay", "--all"], env=env, capture_output=True, timeout=60, check=True)
    wait_until(lambda: sink.message(ids["dead"]).status == 200)
    for message_id in [*waiting, ids["dead"]]:
        assert sink.message(message_id).body == stored.bodies[message_id]
    url = wait_until(EmbeddedValkey(home).running_url)
    assert all(status(url, i).status == "delivered" for i in ids.values())
    assert sink.stats()["duplicates"] == 0
    worker.signal_group(signal.SIGINT)
    assert worker.wait(timeout=20) == 0
