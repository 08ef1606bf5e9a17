"""Chaos: ferry's whole stack under faults, and nothing answered 202 lost.

Messages go in an open loop through `ferry proxy --workers 2` (HTTPS, strict
durability) to three workers under `ferry workers start`, into `ferry sink`
(HTTPS), while a seeded schedule SIGKILLs workers and a proxy process, stops a
worker past its lease, SIGKILLs Valkey and restarts it from its append-only
file, makes it refuse writes (OOM, READONLY), and takes the main server down,
then slow, then flaky. tests/chaos/run.py says what must hold at the end.

- `test_chaos_short` runs in CI: about 35 s of faults at a modest rate.
- `test_chaos_long` runs only when asked: `FERRY_CHAOS_SECONDS=600` (its fault
  window), with `FERRY_CHAOS_REPORT=<path>` to keep the summary's JSON and
  `FERRY_CHAOS_RATE` (messages/s, default 40) to change the load.

`FERRY_CHAOS_SEED` replays a schedule (a run prints its seed); without it each
run draws one. Every run writes `chaos-summary.json` and `chaos.log` (each
fault as injected, progress) in its tmp dir, beside every process's log.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chaos.run import ChaosConfig, Outcome, run_chaos

LONG_SECONDS = float(os.environ.get("FERRY_CHAOS_SECONDS") or 0)


def _seed() -> int:
    given = os.environ.get("FERRY_CHAOS_SEED")
    return int(given) if given else random.SystemRandom().randrange(1_000_000)


def _logger(path: Path, echo: Callable[[str], None] | None) -> Callable[[str], None]:
    started = time.monotonic()

    def log(line: str) -> None:
        stamped = f"[{time.monotonic() - started:7.1f} s] {line}"
        with open(path, "a") as file:
            file.write(stamped + "\n")
        if echo is not None:
            echo(stamped)

    return log


def _run(tmp_path: Path, config: ChaosConfig, capsys: pytest.CaptureFixture[str], report: str | None = None) -> Outcome:
    def echo(line: str) -> None:
        with capsys.disabled():
            print(line, flush=True)

    log = _logger(tmp_path / "chaos.log", echo if config.name == "long" else None)
    log(f"chaos run {config.name}, seed {config.seed}, in {tmp_path}")
    outcome = run_chaos(tmp_path / "run", config, log)
    text = json.dumps(outcome.summary, indent=2, default=str)
    summary_path = tmp_path / "chaos-summary.json"
    summary_path.write_text(text)
    (tmp_path / "chaos-summary.txt").write_text(outcome.table + "\n")
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(text)
        Path(report).with_suffix(".txt").write_text(outcome.table + "\n")
    with capsys.disabled():
        print(f"\n{outcome.table}\n(summary: {summary_path}; logs: {tmp_path / 'run'})", flush=True)
    assert not outcome.findings, (
        f"the chaos run broke ferry's guarantees; replay its schedule with FERRY_CHAOS_SEED={config.seed}\n"
        f"{outcome.table}\nlogs and the sink's database: {tmp_path / 'run'}"
    )
    return outcome


@pytest.mark.timeout(360)
def test_chaos_short(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """About 35 s of every fault at 25 messages/s: the CI run (under 90 s of wall time on 2 cores)."""
    _run(tmp_path, ChaosConfig("short", fault_seconds=34.0, rate=25.0, senders=4, seed=_seed()), capsys)


@pytest.mark.skipif(LONG_SECONDS <= 0, reason="the long chaos run: FERRY_CHAOS_SECONDS=600 runs it")
@pytest.mark.timeout(LONG_SECONDS + 900)
def test_chaos_long(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """FERRY_CHAOS_SECONDS of faults at FERRY_CHAOS_RATE messages/s (40), each fault kind many times."""
    config = ChaosConfig(
        "long",
        fault_seconds=LONG_SECONDS,
        rate=float(os.environ.get("FERRY_CHAOS_RATE") or 40),
        senders=8,
        seed=_seed(),
        drain_seconds=300.0,
        answer_seconds=120.0,
    )
    _run(tmp_path, config, capsys, os.environ.get("FERRY_CHAOS_REPORT"))
