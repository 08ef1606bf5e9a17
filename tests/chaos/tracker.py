"""Every process a chaos run starts, found by pid, so that none is left behind.

A pid alone does not name a process for long (pids are reused), so each one is
kept with its start time (field 22 of /proc/<pid>/stat, in clock ticks since
boot): the pair names one process for the life of the machine. The tracker
scans /proc for the descendants of the processes the run started itself (the
proxy's uvicorn children, the supervisor's workers, their replacements) and
remembers every one it ever saw; at the end each must be gone, and cleanup
kills exactly those, never anything found by name.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Seen:
    pid: int
    start: int  # clock ticks since boot: with the pid, one process
    role: str  # valkey, sink, proxy, proxy-process, workers, worker-N, other
    cmdline: str


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a live pid, or None."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _environ(pid: int, name: str) -> str | None:
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    prefix = name.encode() + b"="
    for entry in raw.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None


def is_alive(seen: Seen) -> bool:
    """The very process (pid and start time), not reaped and not a zombie."""
    stat = _stat(seen.pid)
    return stat is not None and stat[2] == seen.start and stat[0] not in ("Z", "X")


class ProcessTracker:
    """The processes of one run: its roots and every descendant ever seen."""

    def __init__(self) -> None:
        self.roots: dict[int, Seen] = {}
        self.seen: dict[tuple[int, int], Seen] = {}

    def add_root(self, pid: int, role: str) -> Seen | None:
        stat = _stat(pid)
        if stat is None:
            return None
        seen = Seen(pid, stat[2], role, _cmdline(pid))
        self.roots[pid] = seen
        self.seen[(pid, seen.start)] = seen
        return seen

    def scan(self) -> list[Seen]:
        """Walk /proc once: record new descendants of the live roots; return every live one."""
        children: dict[int, list[tuple[int, int]]] = {}
        for entry in PROC.iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            stat = _stat(pid)
            if stat is None or stat[0] in ("Z", "X"):
                continue
            children.setdefault(stat[1], []).append((pid, stat[2]))
        live: list[Seen] = []
        todo = [root for root in self.roots.values() if is_alive(root)]
        while todo:
            parent = todo.pop()
            live.append(parent)
            for pid, start in children.get(parent.pid, []):
                seen = self.seen.get((pid, start))
                cmdline = _cmdline(pid)
                # Seen between fork and exec, a child still shows its parent's command
                # line: what it is is known once it changes.
                if seen is None or (cmdline and cmdline != seen.cmdline):
                    seen = Seen(pid, start, self._role(pid, parent, cmdline), cmdline)
                    self.seen[(pid, start)] = seen
                todo.append(seen)
        return live

    @staticmethod
    def _role(pid: int, parent: Seen, cmdline: str) -> str:
        if parent.role == "proxy":
            return "proxy-process" if "spawn_main" in cmdline else "proxy-helper"
        if parent.role == "workers" and cmdline.endswith("-m ferry worker"):  # the supervisor's argv
            return _environ(pid, "WORKER_ID") or "worker-?"
        return "other"

    def live(self, role_prefix: str) -> list[Seen]:
        return sorted(
            (seen for seen in self.scan() if seen.role.startswith(role_prefix)), key=lambda seen: seen.role
        )

    def workers(self) -> dict[str, Seen]:
        """The live `ferry worker` processes by WORKER_ID."""
        return {seen.role: seen for seen in self.live("worker-")}

    def proxy_processes(self) -> list[Seen]:
        return self.live("proxy-process")

    def left_behind(self) -> list[Seen]:
        return [seen for seen in self.seen.values() if is_alive(seen)]

    def kill_all(self) -> list[Seen]:
        """SIGKILL every process of the run still alive (a stopped one too); return them."""
        killed = []
        for seen in self.left_behind():
            try:
                os.kill(seen.pid, signal.SIGCONT)
                os.kill(seen.pid, signal.SIGKILL)
                killed.append(seen)
            except ProcessLookupError:
                pass
        return killed
