"""ferry's Worker run inside the test process, against a real Redis and a real sink.

It is what `ferry worker` runs once it has its settings (ferry.worker.worker.serve):
the Worker on a Queue, a Deliverer and its metrics, in an event loop of its own
thread, so that the test body stays as it is (blocking checks polled with
`wait_until`) while the worker runs beside it. What it leaves out is the process
around the worker (signals, exit codes, the metrics port, the server checks and
upgrade at start-up): the subprocess tests of `ferry worker` keep those.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import structlog

from ferry.logs import configure
from ferry.metrics import WorkerMetrics
from ferry.queue import Partitions
from ferry.queue.connection import connect
from ferry.settings import Settings
from ferry.worker.delivery import Deliverer
from ferry.worker.worker import Worker


class _ThreadLogs:
    """structlog's output, one file per worker thread; other threads' lines go to stderr."""

    def __init__(self) -> None:
        self.files: dict[int, tuple[TextIO, int]] = {}
        self.lock = threading.Lock()

    def add(self, path: Path, level: str) -> None:
        self.files[threading.get_ident()] = (open(path, "a", buffering=1), logging.getLevelName(level))

    def remove(self) -> None:
        target, _ = self.files.pop(threading.get_ident())
        target.close()

    def drop_below_level(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
        """A structlog processor: each worker logs at its own LOG_LEVEL, as its own process would."""
        found = self.files.get(threading.get_ident())
        if found is not None:
            name = {"exception": "ERROR", "warn": "WARNING", "msg": "INFO"}.get(method_name, method_name.upper())
            if logging.getLevelName(name) < found[1]:
                raise structlog.DropEvent
        return event_dict

    def msg(self, message: str) -> None:
        found = self.files.get(threading.get_ident())
        if found is None:
            print(message, file=sys.stderr)
        else:
            found[0].write(message + "\n")

    debug = info = warn = warning = error = err = critical = exception = fatal = failure = log = msg


_LOGS = _ThreadLogs()


@contextmanager
def capture_worker_logs() -> Iterator[None]:
    """ferry's own log processors and renderer, each worker's lines in its log file."""
    saved = structlog.get_config()
    configure("DEBUG")
    processors = structlog.get_config()["processors"]
    structlog.configure(
        processors=[_LOGS.drop_below_level, *processors],
        logger_factory=lambda *args: _LOGS,
        cache_logger_on_first_use=False,  # so that the configuration is restored after the test
    )
    try:
        yield
    finally:
        structlog.configure(**saved)


class InProcessWorker:
    """One Worker in a thread of its own; keyword settings are the environment variables of `ferry worker`."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.settings = Settings(**env)  # type: ignore[arg-type]  # the variables' names, validated as the CLI does
        assert self.settings.redis_url is not None
        self.worker_id = self.settings.worker_id
        self.log_path = log_path
        self.metrics = WorkerMetrics(self.worker_id)
        self._thread = threading.Thread(target=self._main, name=f"worker {self.worker_id}", daemon=True)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: Worker | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise AssertionError(f"worker {self.worker_id} did not start within {timeout} s")
        self._raise_error()

    def _main(self) -> None:
        _LOGS.add(self.log_path, self.settings.log_level)
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported to the test by stop()
            self._error = error
        finally:
            _LOGS.remove()
            self._ready.set()

    async def _serve(self) -> None:
        structlog.contextvars.bind_contextvars(worker_id=self.worker_id)
        assert self.settings.redis_url is not None
        redis = connect(self.settings.redis_url)
        try:
            async with Deliverer(self.settings) as deliverer:
                self._worker = Worker(self.settings, Partitions(redis, self.settings.partitions), deliverer, self.metrics)
                self._loop = asyncio.get_running_loop()
                self._ready.set()
                await self._worker.run()
        finally:
            await redis.aclose()
        if self._worker.failed_task is not None:  # `ferry worker` would exit 1
            raise RuntimeError(f"its {self._worker.failed_task} task kept failing")

    @property
    def running(self) -> bool:
        """Whether Worker.run() is still going (a process would still be alive)."""
        return self._thread.is_alive()

    def stop(self, force: bool = False, timeout: float = 30.0) -> None:
        """As SIGTERM does: stop fetching, finish or give back, and return. `force`: as a second SIGTERM."""
        loop, worker = self._loop, self._worker
        if self._thread.is_alive() and loop is not None and worker is not None:
            try:
                loop.call_soon_threadsafe(worker.stop)
                if force:
                    loop.call_soon_threadsafe(worker.stop)
            except RuntimeError:  # its loop closed meanwhile: it has stopped
                pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"worker {self.worker_id} did not stop within {timeout} s:\n{self.log()}")
        self._raise_error()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise AssertionError(f"worker {self.worker_id} failed:\n{self.log()}") from error

    def sample(self, name: str) -> float:
        """One of its metrics, as its /metrics would show it (worker_id label)."""
        value = self.metrics.registry.get_sample_value(name, {"worker_id": self.worker_id})
        assert value is not None, f"no {name} for worker {self.worker_id}"
        return value

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
