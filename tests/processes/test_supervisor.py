"""The supervisor never stops watching a child in silence: a restart that cannot even
start the program counts as a crash, is logged, backs off and is given up on loudly."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from ferry.processes.supervisor import ChildSpec, RestartPolicy, State, Supervisor


async def test_a_restart_that_cannot_start_the_program_is_logged_and_given_up_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program = tmp_path / "python"
    program.symlink_to(sys.executable)
    supervisor = Supervisor(RestartPolicy(first_delay_seconds=0.05, max_delay_seconds=0.1, max_crashes=3, window_seconds=30))
    await supervisor.add(ChildSpec("vanishing", [str(program), "-c", "import sys; sys.exit(3)"], dict(os.environ), "worker"))
    program.unlink()  # every restart now fails to start the program at all
    child = supervisor.children["vanishing"]
    await asyncio.wait_for(supervisor.all_failed.wait(), 20)
    assert child.state is State.FAILED and len(child.crashes) == 3
    assert child.watcher is not None and child.watcher.done() and child.watcher.exception() is None
    output = capsys.readouterr()
    assert "cannot start it again" in output.out + output.err
    assert "giving up: it keeps crashing" in output.out + output.err
