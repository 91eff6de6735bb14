"""Finding the CPython processes of this node: a psutil scan, each process examined once.

A process is known by (pid, create time), so a restarted service (new PID) or a reused PID
is a new process. Examining one (its interpreter and version, its container) reads /proc
and ELF files only; nothing touches the process.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import psutil

from profiler.attach.process import TargetInfo, inspect_process
from profiler.errors import AsyncInspectError

__all__ = ["ProcessFacts", "Scanner", "container_id"]

_CONTAINER_ID = re.compile(r"([0-9a-f]{64})")
_SELF = os.getpid()


@dataclass
class ProcessFacts:
    """What the daemon knows of one process."""

    pid: int
    created: float
    name: str
    cmdline: list[str]
    environ: dict[str, str]
    container_id: str | None
    target: TargetInfo | None = None  # set when it is a CPython we could examine
    problem: str = ""  # why it is not attachable (not Python, too old, no permission)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, float]:
        """Identity across scans: a reused PID is another process."""
        return self.pid, self.created

    @property
    def command(self) -> str:
        """The command line as one string (for globs and display)."""
        return " ".join(self.cmdline)


def container_id(pid: int) -> str | None:
    """The container id in /proc/PID/cgroup (docker, containerd, cri-o paths), if any."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as cgroup:
            for line in cgroup:
                found: list[str] = _CONTAINER_ID.findall(line.rsplit(":", 1)[-1])
                if found:
                    return found[-1]
    except OSError:
        pass
    return None


def _looks_like_python(process: psutil.Process, name: str, cmdline: list[str]) -> bool:
    # A cheap first look: the name, the command, or libpython mapped (embedded interpreters).
    if "python" in name.lower() or (cmdline and "python" in os.path.basename(cmdline[0])):
        return True
    try:
        with open(f"/proc/{process.pid}/maps", encoding="utf-8", errors="replace") as maps:
            return any("libpython3" in line for line in maps)
    except OSError:
        return False


class Scanner:
    """Scans the process table; remembers what it learned about each process."""

    def __init__(self) -> None:
        self._known: dict[tuple[int, float], ProcessFacts] = {}

    def scan(self) -> list[ProcessFacts]:
        """The Python processes running now (examined), newest facts for each."""
        current: dict[tuple[int, float], ProcessFacts] = {}
        for process in psutil.process_iter(["pid", "name", "cmdline", "create_time"]):
            info = process.info
            pid = info["pid"]
            if pid == _SELF or info["create_time"] is None:
                continue
            key = (pid, info["create_time"])
            facts = self._known.get(key)
            if facts is None:
                facts = self._examine(process, info)
                if facts is None:
                    continue
            current[key] = facts
        self._known = current
        return list(current.values())

    def _examine(self, process: psutil.Process, info: dict[str, object]) -> ProcessFacts | None:
        name = str(info.get("name") or "")
        raw_cmdline = info.get("cmdline")
        cmdline = [str(part) for part in raw_cmdline] if isinstance(raw_cmdline, list) else []
        if not _looks_like_python(process, name, cmdline):
            return None
        try:
            environ = process.environ()
        except (psutil.Error, OSError):
            environ = {}
        facts = ProcessFacts(
            pid=process.pid,
            created=float(info["create_time"]),  # type: ignore[arg-type]
            name=name,
            cmdline=cmdline,
            environ=environ,
            container_id=container_id(process.pid),
        )
        try:
            facts.target = inspect_process(process.pid, allow_stopped=True)
        except AsyncInspectError as exc:
            facts.problem = str(exc)
        return facts
