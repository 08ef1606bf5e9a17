"""Every call that differs between Linux, macOS and Windows, in one place.

- Stop requests: SIGTERM and SIGINT on POSIX (through the event loop's signal
  handlers); Ctrl-C, Ctrl-Break and console close on Windows (through
  `signal.signal` and SetConsoleCtrlHandler, handed to the loop with
  `call_soon_threadsafe`: Windows' loops have no `add_signal_handler`).
- A supervisor's graceful stop of a child: SIGTERM on POSIX; on Windows
  CTRL_BREAK_EVENT to the child's own process group.
- Children that stop when their supervisor dies: PR_SET_PDEATHSIG on Linux; a
  thread in the child that watches its parent elsewhere (macOS, and Windows
  after its job object); on Windows also a job object that ends them with it.
- The secret-settings pipe: an inherited descriptor on POSIX, an inherited
  handle on Windows.
- A file lock (fcntl, msvcrt), whether unix sockets exist, uvicorn's loop,
  the descriptor limit, glibc's mmap threshold.

FERRY_PORTABLE_PROCESS_CONTROL=true makes Linux take the paths Windows and
macOS take (signal.signal handlers, the parent watch, no scaling signals), so
that they are tested where only Linux runs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from ferry.logs import get_logger

log = get_logger(__name__)

PORTABLE_ENV = "FERRY_PORTABLE_PROCESS_CONTROL"
# Set by a supervisor in a child's environment: the pid the child watches.
WATCH_PARENT_ENV = "FERRY_WATCH_PARENT"
PARENT_POLL_SECONDS = 0.5
# Windows ends a process this long after its console closes; the drain gets what it can of it.
CONSOLE_CLOSE_GRACE_SECONDS = 5.0
PR_SET_PDEATHSIG = 1

WINDOWS = sys.platform == "win32"
LINUX = sys.platform.startswith("linux")
# The embedded Valkey listens on one where they exist (the URL file would not survive on Windows anyway).
UNIX_SOCKETS = hasattr(socket, "AF_UNIX") and not WINDOWS
# uvicorn's loop for the proxy: uvloop where it builds, asyncio's own on Windows.
UVICORN_LOOP = "asyncio" if WINDOWS else "uvloop"
# What a process raises on itself to stop gracefully (its parent watch does).
if sys.platform == "win32":
    STOP_SIGNAL = signal.SIGBREAK
else:
    STOP_SIGNAL = signal.SIGTERM


def portable() -> bool:
    """Whether this process uses the signal-free, watch-based paths (always on Windows)."""
    return WINDOWS or os.environ.get(PORTABLE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def scaling_signals() -> bool:
    """Whether SIGTTIN/SIGTTOU scale a pool here: the POSIX shortcut beside the control channel."""
    return not portable()


# --- stop requests -----------------------------------------------------------------


def on_stop(callback: Callable[[], None]) -> None:
    """Call `callback` in the running loop at each stop request (it counts them itself)."""
    loop = asyncio.get_running_loop()
    if not portable():
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, callback)
            return
        except NotImplementedError:  # a loop without signal handlers: the portable way below
            pass

    def handler(signum: int, frame: object) -> None:
        _hand_to(loop, callback)

    for signum in _stop_signals():
        signal.signal(signum, handler)
    _on_console_close(loop, callback)


def _hand_to(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Run `callback` in `loop`, from a signal handler or another thread; a request that
    comes after the loop has closed (the process is on its way out) is dropped."""
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:  # "Event loop is closed"
        pass


def _stop_signals() -> tuple[signal.Signals, ...]:
    if sys.platform == "win32":
        return (signal.SIGINT, signal.SIGBREAK)  # Ctrl-C, Ctrl-Break (and a supervisor's CTRL_BREAK_EVENT)
    return (signal.SIGTERM, signal.SIGINT)


# Console handlers must outlive the call that installs them (ctypes would free them).
_console_handlers: list[object] = []


def _on_console_close(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Windows: closing the console, logging off or shutting down asks for a drain too."""
    if sys.platform != "win32":
        return
    import ctypes
    from ctypes import wintypes

    close_events = {2, 5, 6}  # CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT, CTRL_SHUTDOWN_EVENT

    def handle(event: int) -> bool:
        if event not in close_events:
            return False  # Ctrl-C and Ctrl-Break: Python's own handler turns them into signals
        _hand_to(loop, callback)
        time.sleep(CONSOLE_CLOSE_GRACE_SECONDS)  # returning would end the process at once
        return True

    routine = ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.DWORD)(handle)
    _console_handlers.append(routine)
    ctypes.windll.kernel32.SetConsoleCtrlHandler(routine, True)


# --- supervised children -----------------------------------------------------------


def child_options() -> dict[str, Any]:
    """Popen keyword arguments of a supervised child: a session (POSIX) or process group
    (Windows) of its own, so a terminal's Ctrl-C reaches only the supervisor."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    options: dict[str, Any] = {"start_new_session": True}
    if LINUX and not portable():
        options["preexec_fn"] = _die_with_parent
    return options


def child_environment() -> dict[str, str]:
    """What a child needs in its environment to stop with this supervisor (the parent watch)."""
    if LINUX and not portable():
        return {}  # PR_SET_PDEATHSIG does it
    return {WATCH_PARENT_ENV: str(os.getpid())}


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM me when my parent dies (Linux)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def adopt(pid: int) -> None:
    """After starting a child: on Windows, into this supervisor's job object, which ends
    it when the supervisor ends, however (the parent watch stays as the fallback)."""
    if sys.platform == "win32":
        try:
            _windows_job().assign(pid)
        except OSError as error:
            log.warning("cannot tie the child to its supervisor's job object", pid=pid, error=str(error))


def request_stop(process: asyncio.subprocess.Process) -> None:
    """Ask a child to drain and exit: SIGTERM, or Ctrl-Break to its process group on Windows."""
    if sys.platform == "win32":
        process.send_signal(signal.CTRL_BREAK_EVENT)
    else:
        process.send_signal(signal.SIGTERM)


def watch_parent() -> None:
    """In a supervised child: stop gracefully once the supervisor is gone.

    Where PR_SET_PDEATHSIG is not used, a supervisor names itself in the child's
    environment; a thread polls it and raises the stop signal on this process, so
    the child drains as on SIGTERM. The variable is removed, so that this child's
    own children do not watch their grandparent.
    """
    value = os.environ.pop(WATCH_PARENT_ENV, None)
    if not value:
        return
    try:
        parent = psutil.Process(int(value))
    except (ValueError, psutil.Error):
        log.warning("supervisor already gone at start, stopping", supervisor_pid=value)
        _stop_myself()
        return

    def watch() -> None:
        while _alive(parent):
            time.sleep(PARENT_POLL_SECONDS)
        log.warning("supervisor gone, stopping", supervisor_pid=parent.pid)
        _stop_myself()

    threading.Thread(target=watch, name="parent watch", daemon=True).start()


def _stop_myself() -> None:
    """The stop signal to this process, from any thread, so that its main thread wakes:
    on POSIX sent to the process (the kernel interrupts the main thread's wait with it);
    on Windows raised (the C runtime calls the handler, whose loop has a wakeup fd)."""
    if sys.platform == "win32":
        signal.raise_signal(STOP_SIGNAL)
    else:
        os.kill(os.getpid(), STOP_SIGNAL)


def _alive(parent: psutil.Process) -> bool:
    if sys.platform == "win32":
        return parent.is_running()  # psutil compares start times: a reused pid is not the parent
    return os.getppid() == parent.pid  # re-parented the moment it dies, zombie or not


if sys.platform == "win32":
    import ctypes
    from ctypes import wintypes

    class _BasicLimits(ctypes.Structure):
        _fields_ = [
            ("PerProcessUserTimeLimit", ctypes.c_int64),
            ("PerJobUserTimeLimit", ctypes.c_int64),
            ("LimitFlags", wintypes.DWORD),
            ("MinimumWorkingSetSize", ctypes.c_size_t),
            ("MaximumWorkingSetSize", ctypes.c_size_t),
            ("ActiveProcessLimit", wintypes.DWORD),
            ("Affinity", ctypes.c_size_t),
            ("PriorityClass", wintypes.DWORD),
            ("SchedulingClass", wintypes.DWORD),
        ]

    class _IoCounters(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint64) for name in ("Reads", "Writes", "Others", "ReadBytes", "WriteBytes", "OtherBytes")]

    class _ExtendedLimits(ctypes.Structure):
        _fields_ = [
            ("BasicLimitInformation", _BasicLimits),
            ("IoInfo", _IoCounters),
            ("ProcessMemoryLimit", ctypes.c_size_t),
            ("JobMemoryLimit", ctypes.c_size_t),
            ("PeakProcessMemoryUsed", ctypes.c_size_t),
            ("PeakJobMemoryUsed", ctypes.c_size_t),
        ]

    class _Job:
        """A job object that kills its processes when its last handle closes: at our exit."""

        KILL_ON_JOB_CLOSE = 0x2000
        EXTENDED_LIMIT_INFORMATION = 9
        PROCESS_SET_QUOTA_AND_TERMINATE = 0x0100 | 0x0001

        def __init__(self) -> None:
            kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
            self.kernel32 = kernel32
            self.handle = kernel32.CreateJobObjectW(None, None)
            if not self.handle:
                raise ctypes.WinError(ctypes.get_last_error())
            limits = _ExtendedLimits()
            limits.BasicLimitInformation.LimitFlags = self.KILL_ON_JOB_CLOSE
            if not kernel32.SetInformationJobObject(
                self.handle, self.EXTENDED_LIMIT_INFORMATION, ctypes.byref(limits), ctypes.sizeof(limits)
            ):
                raise ctypes.WinError(ctypes.get_last_error())

        def assign(self, pid: int) -> None:
            process = self.kernel32.OpenProcess(self.PROCESS_SET_QUOTA_AND_TERMINATE, False, pid)
            if not process:
                raise ctypes.WinError(ctypes.get_last_error())
            try:
                if not self.kernel32.AssignProcessToJobObject(self.handle, process):
                    raise ctypes.WinError(ctypes.get_last_error())
            finally:
                self.kernel32.CloseHandle(process)

    _job: _Job | None = None

    def _windows_job() -> _Job:
        global _job
        if _job is None:
            _job = _Job()
        return _job


# --- the secret-settings pipe ------------------------------------------------------


def pass_pipe(read_fd: int) -> tuple[dict[str, Any], str]:
    """Popen keyword arguments that let a child inherit `read_fd` alone, and the value
    the child finds in FERRY_SETTINGS_FD to open it again (`open_passed_pipe`)."""
    if sys.platform == "win32":
        import msvcrt

        handle = msvcrt.get_osfhandle(read_fd)
        os.set_handle_inheritable(handle, True)
        return {"startupinfo": subprocess.STARTUPINFO(lpAttributeList={"handle_list": [handle]})}, str(handle)
    return {"pass_fds": (read_fd,)}, str(read_fd)


def open_passed_pipe(value: str) -> int:
    """The descriptor of the pipe a supervisor passed; ValueError or OSError when there is none."""
    if sys.platform == "win32":
        import msvcrt

        return msvcrt.open_osfhandle(int(value), os.O_RDONLY)
    return int(value)


# --- files, descriptors ------------------------------------------------------------


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing), waiting for it; released on exit."""
    with open(path, "a+b") as lock_file:
        if sys.platform == "win32":
            import msvcrt

            while True:
                try:  # locks byte 0; LK_LOCK itself gives up after 10 tries of a second
                    msvcrt.locking(lock_file.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:
                    continue
        else:
            import fcntl

            fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


# glibc's mallopt parameter for the size from which it maps an allocation of its own.
M_MMAP_THRESHOLD = -3


def fix_mmap_threshold(size_bytes: int) -> None:
    """glibc: map every allocation of `size_bytes` or more on its own, for good (mallopt);
    elsewhere (musl, macOS, Windows) nothing."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows' ctypes loads no library by None
        return
    mallopt(M_MMAP_THRESHOLD, size_bytes)


def raise_descriptor_limit(needed: int) -> int | None:
    """Raise this process's descriptor limit towards `needed` (up to the hard limit); the
    soft limit then, or None where there is none to mind (unlimited, or Windows)."""
    if sys.platform == "win32":
        return None
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    return None if soft == resource.RLIM_INFINITY else int(soft)
