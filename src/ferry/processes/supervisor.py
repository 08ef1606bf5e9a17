"""Keeping ferry's processes alive: start, restart with backoff, give up loudly, stop in order.

Children run in sessions of their own: a Ctrl-C in the terminal reaches only the
supervisor, which then stops each child once, gracefully, in a chosen order
(a worker that got the terminal's SIGINT and then the supervisor's SIGTERM would
take the second as "stop now"). Each child also stops when the supervisor dies,
so no orphan keeps running (how, on each platform: `ferry.platform`).

A child's secret settings (API keys, the signing secret, the URLs) never go
through its environment, which every process it starts would inherit and which
`/proc/<pid>/environ` shows: each start writes them on a fresh pipe whose read
end the child alone inherits, named by FERRY_SETTINGS_FD; the child
reads them once, while loading its settings, and closes it. Nothing is on disk,
and nothing is left to clean up when the supervisor is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ferry import platform
from ferry.logs import get_logger
from ferry.settings import SETTINGS_FD_ENV

log = get_logger(__name__)


def ferry_argv(*args: str) -> list[str]:
    """Run a ferry command with this interpreter, whatever PATH says."""
    return [sys.executable, "-m", "ferry", *args]


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    group: str  # children stop group by group, in the order given to stop_all
    # Settings by variable name that the child reads from a pipe, never from its environment.
    secrets: dict[str, str] = field(default_factory=dict)


class State(Enum):
    RUNNING = "running"
    STOPPING = "stopping"
    FAILED = "failed"


@dataclass
class RestartPolicy:
    """Restart after 1, 2, 4... s (capped, jittered); give up after `max_crashes` in `window_seconds`."""

    first_delay_seconds: float = 1.0
    max_delay_seconds: float = 30.0
    max_crashes: int = 5
    window_seconds: float = 60.0


@dataclass
class Child:
    spec: ChildSpec
    process: asyncio.subprocess.Process | None = None
    state: State = State.RUNNING
    crashes: deque[float] = field(default_factory=deque)
    watcher: asyncio.Task[None] | None = None


class Supervisor:
    """The children of one ferry command, each watched by a task of its own."""

    def __init__(
        self,
        policy: RestartPolicy | None = None,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self.children: dict[str, Child] = {}
        self.on_restart = on_restart
        self.all_failed = asyncio.Event()

    async def add(self, spec: ChildSpec) -> None:
        child = Child(spec)
        self.children[spec.name] = child
        await self._spawn(child)
        child.watcher = asyncio.create_task(self._watch(child), name=f"watch {spec.name}")

    async def _spawn(self, child: Child) -> None:
        env = {**child.spec.env, **platform.child_environment()}
        if not child.spec.secrets:
            child.process = await _exec(child.spec.argv, {"env": env, **platform.child_options()})
            self._started(child)
            return
        read_fd, write_fd = os.pipe()
        try:
            passing, fd_value = platform.pass_pipe(read_fd)
            options = {"env": {**env, SETTINGS_FD_ENV: fd_value}, **platform.child_options(), **passing}
            child.process = await _exec(child.spec.argv, options)
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        send_secrets(write_fd, child.spec.secrets)
        self._started(child)

    @staticmethod
    def _started(child: Child) -> None:
        assert child.process is not None
        platform.adopt(child.process.pid)
        log.info("started", child=child.spec.name, pid=child.process.pid)

    async def _watch(self, child: Child) -> None:
        while True:
            assert child.process is not None
            code = await child.process.wait()
            if child.state is not State.RUNNING:
                log.info("stopped", child=child.spec.name, exit_code=code)
                return
            if not await self._restart(child, code):
                return

    async def _restart(self, child: Child, code: int) -> bool:
        """Start a crashed child again after its backoff; False once given up, or stopping.

        A start that fails (no such program, out of descriptors) counts as a crash, so
        it backs off and is given up on like one, never ending the watch in silence.
        """
        while True:
            delay = self._crashed(child, code)
            if delay is None:
                return False
            await asyncio.sleep(delay)
            if child.state is not State.RUNNING:
                return False
            try:
                await self._spawn(child)
            except OSError as error:
                log.error("cannot start it again", child=child.spec.name, error=str(error))
                code = -1
                continue
            if self.on_restart is not None:
                self.on_restart(child.spec.name)
            return True

    def _crashed(self, child: Child, code: int) -> float | None:
        """Note a crash; the delay before restarting, or None when giving up."""
        now = time.monotonic()
        child.crashes.append(now)
        while child.crashes and child.crashes[0] < now - self.policy.window_seconds:
            child.crashes.popleft()
        if len(child.crashes) >= self.policy.max_crashes:
            child.state = State.FAILED
            log.error(
                "giving up: it keeps crashing",
                child=child.spec.name,
                exit_code=code,
                crashes=len(child.crashes),
                window_seconds=self.policy.window_seconds,
            )
            if all(c.state is State.FAILED for c in self.children.values()):
                self.all_failed.set()
            return None
        delay = min(
            self.policy.max_delay_seconds,
            self.policy.first_delay_seconds * 2.0 ** (len(child.crashes) - 1),
        )
        delay *= random.uniform(0.8, 1.2)
        log.warning("crashed, restarting", child=child.spec.name, exit_code=code, restart_in_seconds=round(delay, 2))
        return delay

    async def remove(self, name: str, timeout_seconds: float) -> None:
        """Stop one child gracefully (SIGTERM or Ctrl-Break, then a kill after `timeout_seconds`)."""
        child = self.children.pop(name)
        await self._stop(child, timeout_seconds)

    async def _stop(self, child: Child, timeout_seconds: float) -> None:
        previous, child.state = child.state, State.STOPPING
        process = child.process
        if previous is State.FAILED or process is None or process.returncode is not None:
            if child.watcher is not None:
                child.watcher.cancel()
            return
        platform.request_stop(process)
        try:
            await asyncio.wait_for(process.wait(), timeout_seconds)
        except asyncio.TimeoutError:
            log.error("did not stop in time, killing it", child=child.spec.name, timeout_seconds=timeout_seconds)
            process.kill()
            await process.wait()
        if child.watcher is not None:
            await asyncio.gather(child.watcher, return_exceptions=True)

    async def stop_all(self, groups: list[str], timeout_seconds: float) -> None:
        """Stop group after group; within a group, all at once."""
        for group in groups:
            names = [name for name, child in self.children.items() if child.spec.group == group]
            await asyncio.gather(*(self.remove(name, timeout_seconds) for name in names))


async def _exec(argv: list[str], options: dict[str, Any]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(argv[0], *argv[1:], **options)


def send_secrets(write_fd: int, secrets: dict[str, str]) -> None:
    """Write `secrets` on the pipe and close it, from a thread of its own: a payload
    larger than the pipe holds waits for the child to read it, without blocking the
    event loop. A child that dies unread ends the write (EPIPE)."""
    payload = json.dumps(secrets).encode()

    def write() -> None:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(write_fd, view) :]
        except OSError:
            pass  # the child is gone; its supervisor sees it exit
        finally:
            os.close(write_fd)

    threading.Thread(target=write, name="settings pipe", daemon=True).start()


def child_env(**overrides: str) -> dict[str, str]:
    """This process's environment (its secrets already removed by the CLI) and `overrides`."""
    return {**os.environ, **overrides}
