"""remote_exec against real Python processes: 3.14 targets, refused ones, and one in a container.

Every target is tests/targets314/echo_app.py: an asyncio echo server that prints
``READY <port> <loop thread id>``. A test injects a script that writes the native id of the
thread running it to a marker file, then checks the app still echoes. The `spawn` fixture kills
every target and asserts that none is left running.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from profiler.attach import memory as memory_module
from profiler.attach import remote_exec as remote_exec_module
from profiler.attach.remote_exec import (
    cancel_remote_exec,
    list_python_threads,
    remote_exec,
    remote_exec_available,
    wake_idle_thread,
)
from profiler.errors import (
    AttachError,
    NotPython,
    ProcessNotFound,
    ProcessStopped,
    RemoteDebugDisabled,
    UnsupportedPython,
)
from tests.conftest import outside_tmp

PY314_ROOT = Path("/opt/python3.14")
PY314 = PY314_ROOT / "usr/bin/python3.14"
APP = Path(__file__).resolve().parents[1] / "targets314" / "echo_app.py"
RUNS_WITHIN = 5.0  # seconds; a busy thread takes about a millisecond
NOT_RUN_FOR = 0.5  # seconds we watch a request that must not run

needs_314 = pytest.mark.skipif(
    not PY314.exists(),
    reason=f"no Python 3.14 at {PY314}: run bash /work/shared/tools/python3.14.sh /opt/python3.14",
)


@dataclass
class Target:
    """A running echo_app and where its filesystem is seen from here."""

    pid: int
    port: int
    loop_tid: int  # as the app sees it (its own PID namespace)
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return Path(f"/proc/{self.pid}/root")

    def echoes(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(b"still there?\n")
            return conn.makefile("rb").readline() == b"still there?\n"

    def marker_script(self, directory: str) -> tuple[str, Path]:
        """(script path inside the target, marker path here): the script appends its thread id."""
        (self.root / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
        script, marker = f"{directory}/inject-{self.pid}.py", f"{directory}/ran-{self.pid}"
        (self.root / script.lstrip("/")).write_text(
            f"import threading\nwith open({marker!r}, 'a') as f:\n"
            "    f.write(f'{threading.get_native_id()}\\n')\n"
        )
        return script, self.root / marker.lstrip("/")


Spawn = Callable[..., Target]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start echo_app targets; afterwards kill them all and check nothing is left running."""
    targets: list[Target] = []

    def start(
        mode: str,
        *,
        python: str | Path = PY314,
        python_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        user: int | None = None,
        namespace: bool = False,
    ) -> Target:
        command = [str(python), *python_args, str(APP), mode]
        if namespace:
            # A private /tmp, and the interpreter at a path that does not exist out here.
            inner = (
                f"mount -t tmpfs tmpfs /tmp && mkdir /tmp/py && mount --bind {PY314_ROOT} /tmp/py"
                f" && exec /tmp/py/usr/bin/python3.14 {outside_tmp(APP)} {mode}"
            )
            unshare = ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child"]
            command = [*unshare, "sh", "-c", inner]
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, user=user
        )
        assert process.stdout is not None
        ready = process.stdout.readline().split()
        assert ready[:1] == ["READY"], f"target did not start: {command}"
        pid = process.pid
        if namespace:
            pid = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
        target = Target(pid, int(ready[1]), int(ready[2]), [process])
        targets.append(target)
        if mode == "idle":
            # READY is printed just before the loop parks; on a loaded machine the main
            # thread may still be running Python (and would pick a request up) for a while.
            _wait_until(lambda: "poll" in _wchan(pid), f"PID {pid} never parked in epoll_wait")
        return target

    yield start
    for target in targets:
        _kill(target.pid)
        for process in target.processes:  # unshare exits once the app, its child, is gone
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    left = [target.pid for target in targets if _running(target.pid)]
    assert not left, f"targets still running: {left}"


def _wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_until(condition: Callable[[], bool], message: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.01)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie runs nothing; its parent reaps it


def wait_for(path: Path, timeout: float = RUNS_WITHIN) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def ran_in(marker: Path) -> list[int]:
    return [int(line) for line in marker.read_text().split()]


# --- where and when the script runs ---------------------------------------------------------------


@needs_314
def test_busy_loop_runs_script_in_main_thread(spawn: Spawn, tmp_path: Path) -> None:
    # GIVEN an app whose event loop keeps the main thread executing bytecode
    target = spawn("busy")
    script, marker = target.marker_script(str(tmp_path))
    assert remote_exec_available(target.pid) is None
    # WHEN we ask it to run a script
    remote_exec(target.pid, script)
    # THEN the main thread runs it, once, and the app keeps serving
    assert wait_for(marker)
    assert ran_in(marker) == [target.pid]
    assert target.echoes()


@needs_314
def test_loop_in_worker_thread_runs_script_when_that_thread_is_targeted(
    spawn: Spawn, tmp_path: Path
) -> None:
    # GIVEN the loop runs in a thread named "loop" while the main thread blocks in join()
    target = spawn("thread")
    threads = list_python_threads(target.pid)
    assert [(t.is_main, t.name) for t in threads] == [(True, "python3.14"), (False, "loop")]
    loop = threads[1].native_id
    script, marker = target.marker_script(str(tmp_path))
    # WHEN we target the loop thread
    remote_exec(target.pid, script, thread_id=loop)
    # THEN that thread runs the script
    assert wait_for(marker)
    assert ran_in(marker) == [loop]
    assert target.echoes()


@needs_314
def test_main_thread_blocked_in_join_never_runs_script(spawn: Spawn, tmp_path: Path) -> None:
    # GIVEN the main thread blocks in join() while a loop thread is busy
    target = spawn("thread")
    script, marker = target.marker_script(str(tmp_path))
    # WHEN we target the main thread (what sys.remote_exec always does)
    remote_exec(target.pid, script)
    # THEN nothing runs: the request waits for the main thread, which executes no bytecode
    assert not wait_for(marker, NOT_RUN_FOR)
    assert wake_idle_thread(target.pid) is False  # blocked in a futex, not in epoll_wait
    # AND the request can be withdrawn so it cannot fire when join() returns
    assert cancel_remote_exec(target.pid) is True
    assert cancel_remote_exec(target.pid) is False
    assert target.echoes()


@needs_314
def test_idle_loop_runs_script_only_once_woken(spawn: Spawn, tmp_path: Path) -> None:
    # GIVEN an idle server: the main thread sleeps in epoll_wait, no traffic, no timers
    target = spawn("idle")
    epoll_entries_before = _epoll_entries(target.pid)
    script, marker = target.marker_script(str(tmp_path))
    # WHEN we ask it to run a script, nothing happens
    remote_exec(target.pid, script)
    assert not wait_for(marker, NOT_RUN_FOR)
    # THEN a wake-up through its epoll set makes it run, in the main thread, once
    assert wake_idle_thread(target.pid) is True
    assert wait_for(marker)
    assert ran_in(marker) == [target.pid]
    # AND our one-shot registration is gone from the app's epoll set, which still works
    assert _epoll_entries(target.pid) == epoll_entries_before
    assert wake_idle_thread(target.pid) is False  # nothing pending any more
    assert target.echoes()


def _epoll_entries(pid: int) -> list[str]:
    entries = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[eventpoll]":
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines()
            entries += [line for line in info if line.startswith("tfd:")]
    return entries


@needs_314
def test_writes_the_same_request_as_cpython_sys_remote_exec(spawn: Spawn, tmp_path: Path) -> None:
    # GIVEN two idle apps (so that the request stays in memory for us to read)
    by_cpython, by_us = spawn("idle"), spawn("idle")
    requests = {}
    for target, how in ((by_cpython, "cpython"), (by_us, "us")):
        script, _ = target.marker_script(str(tmp_path))
        assert _request(target.pid)[0] == 0
        # WHEN CPython's own sys.remote_exec asks one, and we ask the other
        if how == "cpython":
            call = f"import sys; sys.remote_exec({target.pid}, {script!r})"
            subprocess.run([str(PY314), "-c", call], check=True, timeout=30)
        else:
            remote_exec(target.pid, script)
        requests[how] = _request(target.pid)
        requests[how] = (
            *requests[how][:2],
            requests[how][2].replace(str(target.pid).encode(), b"N"),
        )
    # THEN both hold the same flag, eval-breaker bit and path
    assert requests["cpython"] == requests["us"] == (1, True, f"{tmp_path}/inject-N.py".encode())


def _request(pid: int) -> tuple[int, bool, bytes]:
    """(pending flag, eval-breaker "please stop" bit, script path) of the main thread."""
    target = remote_exec_module._Target.open(pid)
    tstate, _ = target.thread_state(None)
    offsets = target.offsets
    support = tstate + offsets["debugger_support.remote_debugger_support"]
    pending = target.memory.read(support + offsets["debugger_support.debugger_pending_call"], 4)
    path = target.memory.read(support + offsets["debugger_support.debugger_script_path"], 512)
    breaker = target.field(tstate, "debugger_support.eval_breaker")
    return int.from_bytes(pending, "little"), bool(breaker & 1 << 5), path.split(b"\0")[0]


@needs_314
def test_falls_back_to_proc_pid_mem_when_seccomp_blocks_process_vm(
    spawn: Spawn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN process_vm_readv/writev fail as under Docker's default seccomp profile
    def blocked(*_: object) -> int:
        ctypes.set_errno(errno.EPERM)
        return -1

    for name in ("process_vm_readv", "process_vm_writev"):
        monkeypatch.setattr(memory_module._libc, name, blocked)
    target = spawn("busy")
    script, marker = target.marker_script(str(tmp_path))
    # WHEN we ask for a script THEN it runs all the same, through /proc/PID/mem
    remote_exec(target.pid, script)
    assert wait_for(marker)
    assert target.echoes()


# --- a target in another mount and PID namespace --------------------------------------------------


@needs_314
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root + unshare")
def test_target_in_other_mount_and_pid_namespace(spawn: Spawn) -> None:
    # GIVEN an app in its own mount and PID namespaces, with a private /tmp, its interpreter at
    # a path that does not exist here, and its loop in a worker thread
    target = spawn("thread", namespace=True)
    assert not Path("/tmp/py/usr/bin/python3.14").exists()
    loop = next(thread for thread in list_python_threads(target.pid) if not thread.is_main)
    assert loop.native_id != target.loop_tid  # we see another TID than the app does
    # WHEN we place the script in its /tmp through /proc/PID/root and target the loop thread
    script, marker = target.marker_script("/tmp")
    remote_exec(target.pid, script, thread_id=loop.native_id)
    # THEN it runs there, and reports the TID of its own namespace
    assert wait_for(marker)
    assert ran_in(marker) == [target.loop_tid]
    assert target.echoes()


# --- refusals -------------------------------------------------------------------------------------


@needs_314
@pytest.mark.parametrize(
    ("python_args", "env"),
    [(("-X", "disable-remote-debug"), {}), ((), {"PYTHON_DISABLE_REMOTE_DEBUG": "1"})],
    ids=["X-option", "environment"],
)
def test_disabled_remote_debugging_is_refused(
    spawn: Spawn, tmp_path: Path, python_args: tuple[str, ...], env: dict[str, str]
) -> None:
    target = spawn("busy", python_args=python_args, env=env)
    script, marker = target.marker_script(str(tmp_path))
    with pytest.raises(RemoteDebugDisabled) as raised:
        remote_exec(target.pid, script)
    assert f"PID {target.pid} (Python 3.14" in raised.value.message
    assert "PYTHON_DISABLE_REMOTE_DEBUG" in raised.value.hint
    assert remote_exec_available(target.pid) == str(raised.value)
    assert not wait_for(marker, 0.1)
    assert target.echoes()


@needs_314
def test_misspelled_disable_option_does_not_disable(spawn: Spawn, tmp_path: Path) -> None:
    # `-X disable_remote_debug` (underscores) is accepted silently as an unknown -X option.
    target = spawn("busy", python_args=("-X", "disable_remote_debug"))
    assert remote_exec_available(target.pid) is None


def _older_pythons() -> list[str]:
    """Real interpreters (not launcher shims) of 3.12 and 3.13 found on PATH, and ours."""
    found = {os.path.realpath(sys.executable)} if sys.version_info < (3, 14) else set()
    for name in ("python3.12", "python3.13"):
        if path := shutil.which(name):
            probe = subprocess.run(
                [path, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True
            )
            if probe.returncode == 0:
                found.add(os.path.realpath(probe.stdout.strip()))
    return sorted(found)


@pytest.mark.parametrize("python", _older_pythons())
def test_older_python_is_refused(spawn: Spawn, python: str) -> None:
    target = spawn("busy", python=python)
    version = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with pytest.raises(UnsupportedPython) as raised:
        remote_exec(target.pid, "/tmp/never-written.py")
    assert f"Python {version}" in str(raised.value)
    assert "gdb" in raised.value.hint
    assert target.echoes()


def test_no_such_process_is_refused() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    for pid in (gone.pid, 0, -1):
        with pytest.raises(ProcessNotFound):
            remote_exec(pid, "/tmp/never-written.py")
        reason = remote_exec_available(pid)
        assert reason is not None and reason.startswith(f"no process with PID {pid} (")


def test_process_that_is_not_python_is_refused() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(NotPython):
            remote_exec(sleeper.pid, "/tmp/never-written.py")
    finally:
        sleeper.kill()
        sleeper.wait()


@needs_314
def test_stopped_process_is_refused(spawn: Spawn, tmp_path: Path) -> None:
    target = spawn("busy")
    script, _ = target.marker_script(str(tmp_path))
    os.kill(target.pid, signal.SIGSTOP)
    try:
        _wait_until(lambda: _state(target.pid) == "T", "SIGSTOP did not stop the target")
        with pytest.raises(ProcessStopped):
            remote_exec(target.pid, script)
    finally:
        os.kill(target.pid, signal.SIGCONT)
    assert target.echoes()


@needs_314
def test_script_the_target_cannot_open_is_refused(spawn: Spawn, tmp_path: Path) -> None:
    # GIVEN an app running as nobody, and a script only root can read
    target = spawn("busy", user=65534)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    script = shared / "secret.py"
    script.write_text("raise SystemExit('must not run')\n")
    script.chmod(0o600)
    # THEN we refuse instead of letting it print an error on the app's stderr
    with pytest.raises(AttachError, match=r"uid 65534\).* cannot read"):
        remote_exec(target.pid, str(script))
    with pytest.raises(AttachError, match="does not exist in the filesystem"):
        remote_exec(target.pid, str(shared / "missing.py"))
    with pytest.raises(AttachError, match="at most 511"):
        remote_exec(target.pid, "/" + "x" * 600)
    with pytest.raises(ValueError, match="absolute"):
        remote_exec(target.pid, "relative.py")
    assert target.echoes()
