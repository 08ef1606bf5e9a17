"""The admin commands say what is wrong with Redis in one line, never with a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis

from tests.support.processes import bare_env, ferry_command


def test_ferry_dead_on_data_it_cannot_read_says_so_in_one_line(redis_url: str, tmp_path: Path) -> None:
    redis.Redis.from_url(redis_url).set("{message_queue}:dead_letters", "not a sorted set")
    result = subprocess.run(
        [ferry_command(), "dead", "list"],
        env=bare_env(REDIS_URL=redis_url, FERRY_HOME=str(tmp_path / "home")),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"ferry: Redis at {redis_url} answered what ferry cannot use: WRONGTYPE")
