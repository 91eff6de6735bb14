"""Child processes of the benchmark: started in their own session, read line by line, and
always torn down (process group SIGTERM, then SIGKILL) whatever happens to the harness.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from profiler.agent.settings import ACCELERATOR_ENV

__all__ = [
    "BenchError",
    "Child",
    "Children",
    "clean_environment",
    "pinned",
    "prioritize",
    "stop_group",
]

STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL of a process group


class BenchError(Exception):
    """A measurement could not be taken (a process did not start, answer or stop)."""


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    """`argv` run on one CPU via taskset (the whole process, every thread, from exec on)."""
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def prioritize(pid: int, nice: int) -> None:
    """Give `pid`'s session the niceness `nice` (negative: as root).

    Linux schedules by autogroup (one per session) when kernel.sched_autogroup_enabled is on:
    a process's own niceness then only counts against processes of its own session, so the
    knob that competes with other sessions' work is /proc/PID/autogroup. Every child here
    leads its own session, so this changes nothing outside the benchmark's processes.
    """
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, nice)
    with contextlib.suppress(OSError), open(f"/proc/{pid}/autogroup", "w") as group:
        group.write(str(nice))


def stop_group(pgid: int) -> None:
    """SIGTERM process group `pgid`, SIGKILL it after a grace period (for a grandchild that
    leads a group of its own, e.g. a target under `run ... -- setsid`)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)


def clean_environment() -> dict[str, str]:
    """This environment without OTEL_* / ASYNC_INSPECT_* settings that would skew a mode,
    except ASYNC_INSPECT_ACCELERATOR: `=0` measures the pure-Python agent and collector."""
    return {
        key: value
        for key, value in os.environ.items()
        if key == ACCELERATOR_ENV or not key.startswith(("OTEL_", "ASYNC_INSPECT_"))
    }


class Child:
    """One started process: stdin/stdout pipes, stderr in a file, stdout lines in a queue."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        stderr_path: Path,
        env: Mapping[str, str],
        merge_stderr: bool = False,
        cwd: str | None = None,
    ):
        self.name = name
        self.argv = argv
        self.stderr_path = stderr_path
        self.started = time.monotonic()
        # merge_stderr: its stderr lines are read like stdout ones (and still logged), so
        # `expect` sees them the moment they are written.
        self._log = open(stderr_path, "w") if merge_stderr else None  # noqa: SIM115
        with open(stderr_path, "ab") as stderr:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if merge_stderr else stderr,
                env=dict(env),
                start_new_session=True,  # its own process group: we kill it whole
                cwd=cwd,
                text=True,
                bufsize=1,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, name=f"stdout-{name}", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))
            if self._log is not None:
                self._log.write(line)
                self._log.flush()
        self.lines.put(None)
        if self._log is not None:
            self._log.close()

    def expect(self, prefix: str, timeout: float) -> str:
        """The next stdout line starting with `prefix`; BenchError on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"{self.name}: no {prefix!r} line within {timeout:.0f}s")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.popen.wait(timeout=STOP_GRACE)
                raise BenchError(
                    f"{self.name} exited ({self.popen.returncode}) before {prefix!r}; "
                    f"stderr:\n{self.stderr_tail()}"
                )
            if line.startswith(prefix):
                return line

    def expect_stderr(self, text: str, timeout: float) -> None:
        """Wait until `text` appears in its stderr file; BenchError on exit or timeout."""
        deadline = time.monotonic() + timeout
        while text not in self.stderr_path.read_text(errors="replace"):
            if self.popen.poll() is not None:
                raise BenchError(
                    f"{self.name} exited ({self.popen.returncode}) before {text!r}; "
                    f"stderr:\n{self.stderr_tail()}"
                )
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: no {text!r} on stderr within {timeout:.0f}s")
            time.sleep(0.05)

    def send(self, line: str) -> None:
        """Write one line to its stdin (ignored if it has gone)."""
        assert self.popen.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            self.popen.stdin.write(line + "\n")
            self.popen.stdin.flush()

    def signal(self, sig: int) -> None:
        """Send `sig` to the process itself (not its group)."""
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Its exit status; BenchError if it is still running after `timeout`."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{self.name} still running after {timeout:.0f}s") from None

    def stop(self) -> None:
        """SIGTERM its process group, SIGKILL it after a grace period; reap it."""
        for sig, grace in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, STOP_GRACE)):
            if self.popen.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        # The group may outlive its leader (e.g. a target whose CLI parent died).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        for pipe in (self.popen.stdin, self.popen.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()

    def stderr_tail(self, lines: int = 15) -> str:
        """The last lines of its stderr, indented, for error messages."""
        try:
            text = self.stderr_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "    (no stderr)"
        return "\n".join(f"    {line}" for line in text) or "    (empty stderr)"


class Children:
    """Every process the harness started; `stop_all()` ends each one it still has."""

    def __init__(self, directory: Path, env: Mapping[str, str], nice: int = 0) -> None:
        self.directory = directory
        self.env = env
        self.nice = nice  # applied to every child's session (see prioritize)
        self._children: list[Child] = []
        self._groups: set[int] = set()  # groups led by grandchildren (see adopt_group)
        self._serial = 0

    def start(
        self,
        name: str,
        argv: list[str],
        merge_stderr: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> Child:
        """Start `argv` (stderr to `<dir>/<n>-<name>.stderr`; with `merge_stderr` also read
        as lines) with this environment plus `env`, in `cwd` (else ours), and keep it for
        teardown."""
        self._serial += 1
        stderr_path = self.directory / f"{self._serial:03d}-{name}.stderr"
        try:
            child = Child(name, argv, stderr_path, {**self.env, **(env or {})}, merge_stderr, cwd)
        except OSError as exc:
            raise BenchError(f"cannot start {name} ({argv[0]}): {exc.strerror}") from None
        if self.nice:
            prioritize(child.pid, self.nice)
        self._children.append(child)
        return child

    def stop(self, child: Child) -> None:
        """Stop one child and forget it."""
        child.stop()
        with contextlib.suppress(ValueError):
            self._children.remove(child)

    def adopt_group(self, pgid: int) -> None:
        """Also stop process group `pgid` at the end (a grandchild that leads its own)."""
        self._groups.add(pgid)

    def stop_group(self, pgid: int) -> None:
        """Stop an adopted group now and forget it."""
        self._groups.discard(pgid)
        stop_group(pgid)

    def stop_all(self) -> None:
        """Stop every child still known, newest first, then every adopted group."""
        while self._children:
            self._children.pop().stop()
        while self._groups:
            stop_group(self._groups.pop())

    @contextlib.contextmanager
    def scope(self) -> Iterator[Children]:
        """Stop every child on the way out, also on Ctrl-C or SIGTERM of the harness."""
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            # Started in the background by a shell (`... &`), which ignores SIGINT: children
            # would inherit that, and an attach session could not be stopped with Ctrl-C.
            signal.signal(signal.SIGINT, signal.default_int_handler)
        previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            yield self
        finally:
            # A second Ctrl-C must not cut the teardown short.
            previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                self.stop_all()
            finally:
                signal.signal(signal.SIGINT, previous_int)
                signal.signal(signal.SIGTERM, previous)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
