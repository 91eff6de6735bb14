"""gdb injection into real CPython processes, for every event-loop shape and interpreter we have.

GIVEN a target that printed "ready", WHEN inject_with_gdb runs code that connects back to the
test, THEN it connects within 2 s, the target keeps doing its work, and it is left neither
stopped nor traced. A fixture kills every target and fails the test if a gdb is left running.
"""

from __future__ import annotations

import _thread
import glob
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from profiler.attach import inject_with_gdb, inspect_process
from profiler.errors import (
    AttachError,
    AttachTimeout,
    InjectorMissing,
    NotPython,
    PermissionDenied,
    ProcessNotFound,
    ProcessStopped,
    UnsupportedPython,
)
from tests.conftest import outside_tmp

TARGETS = Path(__file__).parents[1] / "targets"
# Records when it ran (the default is evaluated right then), then reports from a thread: in a
# CPU-bound target that thread's imports can queue for the GIL for a while.
CONNECT_BACK = """
import threading, time

def _report(ran_at=time.time()):
    import json, os, socket, sys
    time.sleep({delay})
    info = {{"pid": os.getpid(), "ran_at": ran_at, "main": sorted(vars(sys.modules["__main__"]))}}
    with socket.create_connection(("127.0.0.1", {port})) as conn:
        conn.sendall(json.dumps(info).encode())

threading.Thread(target=_report, name="async-inspect-test", daemon=True).start()
"""


# The same report, sent by the injected code itself rather than from a thread it starts. In
# cpu_spin.py's getcwd target a new thread can wait for the GIL for good on 3.12 (seen in
# ~1 run in 10: the thread loops in timed futex waits while the main thread runs on). The
# main thread takes the GIL back right after each getcwd, before a waiter wakes, and as the
# GIL keeps changing hands, the waiter's timed-out waits never ask for it to be dropped.
CONNECT_NOW = """
import json, os, socket, sys, time

_info = {{"pid": os.getpid(), "ran_at": time.time(), "main": sorted(vars(sys.modules["__main__"]))}}
with socket.create_connection(("127.0.0.1", {port}), timeout=5) as _conn:
    _conn.sendall(json.dumps(_info).encode())
"""


def _find_python(version: str) -> str | None:
    candidates = [shutil.which(f"python{version}") or ""]
    candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python")))
    candidates.append(f"/opt/python{version}/usr/bin/python{version}")
    for path in candidates:
        if path and os.access(path, os.X_OK):
            probe = subprocess.run([path, "-c", "pass"], capture_output=True, timeout=30)
            if probe.returncode == 0:
                return path
    return None


PYTHONS = {version: _find_python(version) for version in ("3.12", "3.13", "3.14")}
PYTHON_311 = _find_python("3.11")
SUPPORTED = [
    pytest.param(path, id=version, marks=pytest.mark.skipif(not path, reason=f"no {version}"))
    for version, path in PYTHONS.items()
]


@pytest.fixture(scope="session", autouse=True)
def ptrace_works() -> None:
    """Skip everything, with the kernel's reason, where ptrace is truly unavailable."""
    if shutil.which("gdb") is None:
        pytest.skip("gdb is not installed")
    with subprocess.Popen(["sleep", "30"]) as sleeper:
        try:
            probe = subprocess.run(
                ["gdb", "-nx", "-batch", "-p", str(sleeper.pid)], capture_output=True, text=True
            )
        finally:
            sleeper.kill()
    if "ptrace:" in probe.stdout + probe.stderr:
        pytest.skip("ptrace refused here: " + (probe.stdout + probe.stderr).strip()[-200:])


class Target:
    """A target process, its output lines, and checks that it is healthy."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        for stream, sink in (
            (self.proc.stdout, self.lines.put),
            (self.proc.stderr, self.stderr.append),
        ):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()
        self.info = json.loads(self.next_line("ready", timeout=15).split(" ", 1)[1])
        self.pid = self.proc.pid

    @staticmethod
    def _read(stream: object, sink: Callable[[str], object]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            sink(line.rstrip("\n"))

    def next_line(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no {prefix!r} line within {timeout}s; stderr: {self.stderr}")

    def assert_healthy(self, pid: int | None = None) -> None:
        """Alive, running (not stopped), and not traced by anyone."""
        pid = pid or self.pid
        assert self.proc.poll() is None, f"target died: {self.stderr}"
        status = Path(f"/proc/{pid}/status").read_text()
        assert "\nTracerPid:\t0\n" in status, "target is still traced"
        state = status.split("State:\t", 1)[1][0]
        assert state in "RSD", f"target left in state {state}"
        assert not self.stderr, f"target printed to stderr: {self.stderr}"

    def cpu_seconds(self, pid: int | None = None) -> float:
        times = psutil.Process(pid or self.pid).cpu_times()
        return float(times.user + times.system)


@pytest.fixture
def spawn() -> Iterator[Callable[..., Target]]:
    targets: list[Target] = []

    def start(*argv: str) -> Target:
        targets.append(Target(list(argv)))
        return targets[-1]

    yield start
    for target in targets:
        target.proc.kill()  # SIGKILL: also ends a namespace's init and a stopped process
        target.proc.wait(timeout=10)
    leftovers = [p for p in psutil.Process().children(recursive=True) if p.name() == "gdb"]
    for process in leftovers:
        process.kill()
    assert not leftovers, f"gdb left running: {leftovers}"


@pytest.fixture
def listener() -> Iterator[Callable[[float], dict[str, object]]]:
    """Accepts one connection from the injected code and returns what it sent."""
    server = socket.create_server(("127.0.0.1", 0))

    def wait(timeout: float) -> dict[str, object]:
        server.settimeout(timeout)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            return dict(json.loads(conn.makefile().read()))

    wait.port = server.getsockname()[1]  # type: ignore[attr-defined]
    yield wait
    server.close()


def _code(listener: object, delay: float = 0.0) -> str:
    return CONNECT_BACK.format(port=listener.port, delay=delay)  # type: ignore[attr-defined]


def _echo(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"still serving\n")
        assert conn.makefile("rb").readline() == b"still serving\n"


def _still_working(target: Target, shape: str) -> None:
    if shape == "busy":
        target.next_line("tick", timeout=2)
    elif shape in ("alone", "sleeper", "joiner", "getcwd", "reexec"):
        before = target.cpu_seconds()
        time.sleep(0.3)
        assert target.cpu_seconds() > before + 0.1
    else:
        for port in target.info["ports"]:
            _echo(port)


SCENARIOS = [
    pytest.param("asyncio_loops.py", "busy", id="busy-loop"),
    pytest.param("asyncio_loops.py", "idle", id="idle-server-in-epoll"),
    pytest.param("asyncio_loops.py", "thread", id="loop-in-thread-main-joins"),
    pytest.param("asyncio_loops.py", "threads", id="three-loops-in-threads"),
    pytest.param("cpu_spin.py", "sleeper", id="cpu-bound-with-sleeping-thread"),
]


@pytest.mark.parametrize(("script", "shape"), SCENARIOS)
@pytest.mark.parametrize("python", SUPPORTED)
def test_injected_code_runs_within_two_seconds(spawn, listener, python, script, shape) -> None:
    target = spawn(python, str(TARGETS / script), shape)
    started = time.time()

    method = inject_with_gdb(inspect_process(target.pid), _code(listener))
    report = listener(10.0)

    print(f"{shape}: ran after {(report['ran_at'] - started) * 1000:.0f} ms via {method}")
    assert report["ran_at"] - started < 2.0
    assert report["pid"] == target.pid
    assert report["main"] == target.info["main"], "a name was added to __main__"
    _still_working(target, shape)
    target.assert_healthy()


@pytest.mark.parametrize("python", SUPPORTED)
def test_thread_entering_pyeval_savethread_is_a_safe_point(spawn, listener, python) -> None:
    # No thread ever waits in a blocking syscall here (getcwd is not one): only the
    # PyEval_SaveThread breakpoint can find a safe point.
    target = spawn(python, str(TARGETS / "cpu_spin.py"), "getcwd")
    started = time.time()

    code = CONNECT_NOW.format(port=listener.port)
    method = inject_with_gdb(inspect_process(target.pid), code)
    report = listener(10.0)

    print(f"getcwd: ran after {(report['ran_at'] - started) * 1000:.0f} ms via {method}")
    assert report["ran_at"] - started < 2.0
    assert "PyEval_SaveThread" in method
    assert report["main"] == target.info["main"]
    _still_working(target, "getcwd")
    target.assert_healthy()


@pytest.mark.parametrize("python", SUPPORTED)
def test_cpu_worker_with_main_in_join(spawn, listener, python) -> None:
    # 3.12 waits in PyThread_acquire_lock_timed: a futex wait we may use. From 3.13 on, join()
    # parks in the parking lot, whose per-thread state must not be re-entered: we refuse.
    target = spawn(python, str(TARGETS / "cpu_spin.py"), "joiner")
    info = inspect_process(target.pid)
    if info.version < (3, 13):
        assert "futex" in inject_with_gdb(info, _code(listener))
        listener(10.0)
    else:
        with pytest.raises(AttachTimeout, match="no safe point"):
            inject_with_gdb(info, _code(listener), timeout=0.5)
    _still_working(target, "joiner")
    target.assert_healthy()


def test_pure_python_cpu_loop_times_out_cleanly(spawn, listener) -> None:
    python = next(path for path in PYTHONS.values() if path)
    target = spawn(python, str(TARGETS / "cpu_spin.py"), "alone")
    started = time.monotonic()

    with pytest.raises(AttachTimeout, match=f"PID {target.pid} reached no safe point"):
        inject_with_gdb(inspect_process(target.pid), _code(listener), timeout=1.0)

    assert time.monotonic() - started < 2.5
    time.sleep(0.3)  # a breakpoint left behind would kill it with SIGTRAP by now
    _still_working(target, "alone")
    target.assert_healthy()


def test_ctrl_c_during_injection_detaches_and_leaves_target_running(spawn, listener) -> None:
    python = next(path for path in PYTHONS.values() if path)
    target = spawn(python, str(TARGETS / "cpu_spin.py"), "alone")  # never reaches a safe point
    info = inspect_process(target.pid)
    timer = threading.Timer(0.5, _thread.interrupt_main)
    started = time.monotonic()
    timer.start()

    with pytest.raises(KeyboardInterrupt):
        inject_with_gdb(info, _code(listener), timeout=20)

    assert time.monotonic() - started < 3
    assert not [p for p in psutil.Process().children(recursive=True) if p.name() == "gdb"]
    time.sleep(0.3)
    _still_working(target, "alone")
    target.assert_healthy()


def test_gdb_detaches_by_itself_when_our_process_dies(spawn) -> None:
    python = next(path for path in PYTHONS.values() if path)
    target = spawn(python, str(TARGETS / "cpu_spin.py"), "alone")  # gdb will wait in `continue`
    inject = f"from profiler.attach import *; inject_with_gdb(inspect_process({target.pid}), '')"
    host = subprocess.Popen([sys.executable, "-c", inject])
    deadline = time.monotonic() + 10
    while "TracerPid:\t0\n" in Path(f"/proc/{target.pid}/status").read_text():
        assert time.monotonic() < deadline, "gdb never attached"
        time.sleep(0.01)
    (gdb,) = [p for p in psutil.Process(host.pid).children() if p.name() == "gdb"]
    private = Path(gdb.environ()["ASYNC_INSPECT_GDB_PLAN"]).parent  # the host's folder

    host.kill()  # no Ctrl-C, no cleanup: the abort pipe closes with the process
    host.wait()
    killed = time.monotonic()
    shutil.rmtree(private)  # which its death left behind

    while gdb.is_running() and gdb.status() != psutil.STATUS_ZOMBIE:  # reaped by init, later
        assert time.monotonic() < killed + 5, "gdb outlived its host by 5 s"
        time.sleep(0.01)
    print(f"gdb detached and exited {(time.monotonic() - killed) * 1000:.0f} ms after")
    time.sleep(0.3)  # a breakpoint left in PyEval_SaveThread would have killed it by now
    _still_working(target, "alone")
    target.assert_healthy()


def test_exceptions_and_system_exit_stay_out_of_the_target(spawn, listener) -> None:
    python = next(path for path in PYTHONS.values() if path)
    target = spawn(python, str(TARGETS / "asyncio_loops.py"), "idle")
    info = inspect_process(target.pid)

    with pytest.raises(AttachError, match="SystemExit: 3"):
        inject_with_gdb(info, _code(listener, delay=0.3) + "\nraise SystemExit(3)\n")

    report = listener(10.0)  # the thread started before the exception still ran
    assert report["main"] == target.info["main"]
    _still_working(target, "idle")
    target.assert_healthy()  # includes: nothing on its stderr


def test_target_in_another_mount_namespace(spawn, listener) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("unshare of mount and PID namespaces needs root")
    python = next(path for path in PYTHONS.values() if path)
    # A fresh tmpfs on /tmp makes the target's file system view really differ from ours.
    shell = 'mount -t tmpfs tmpfs /tmp && exec "$0" "$@"'
    unshare = ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child"]
    script = outside_tmp(TARGETS / "asyncio_loops.py")  # a checkout under /tmp is hidden
    target = spawn(*unshare, "sh", "-c", shell, python, str(script), "idle")
    (child,) = psutil.Process(target.pid).children()
    try:
        info = inspect_process(child.pid)
        assert info.other_mount_ns and info.python_module.startswith(f"/proc/{child.pid}/root/")

        inject_with_gdb(info, _code(listener))

        assert listener(10.0)["pid"] == 1  # the target's own view: init of its PID namespace
        _echo(target.info["ports"][0])
        target.assert_healthy(child.pid)
    finally:
        child.kill()  # as init of its PID namespace it ignores SIGTERM


def test_a_target_that_exec_d_since_it_was_inspected_is_refused(spawn, listener) -> None:
    python = next(path for path in PYTHONS.values() if path)
    target = spawn(python, str(TARGETS / "cpu_spin.py"), "reexec")
    stale = inspect_process(target.pid)
    os.kill(target.pid, signal.SIGUSR1)
    target.next_line("ready", timeout=10)
    if inspect_process(target.pid).module_load_bias == stale.module_load_bias:
        pytest.skip("the interpreter did not move (no ASLR, or a non-PIE executable)")

    with pytest.raises(ProcessNotFound, match="not the program it was when inspected"):
        inject_with_gdb(stale, _code(listener), timeout=1)

    _still_working(target, "alone")
    target.assert_healthy()


def test_a_target_that_execs_while_gdb_waits_is_left_alone(spawn, listener) -> None:
    python = next(path for path in PYTHONS.values() if path)
    target = spawn(python, str(TARGETS / "cpu_spin.py"), "reexec")  # gdb waits in `continue`
    threading.Timer(0.5, os.kill, (target.pid, signal.SIGUSR1)).start()

    with pytest.raises(ProcessNotFound, match="started another program"):
        inject_with_gdb(inspect_process(target.pid), _code(listener), timeout=5)

    target.next_line("ready", timeout=10)  # the new program runs: no breakpoint followed it
    _still_working(target, "alone")
    target.assert_healthy()


def test_no_such_pid() -> None:
    with pytest.raises(ProcessNotFound, match="no process with PID"):
        inspect_process(2**22 + 1)  # above the kernel's largest pid_max


def test_a_process_that_is_not_python(spawn) -> None:
    sleeper = spawn("sh", "-c", "echo 'ready {}'; exec sleep 100")
    while psutil.Process(sleeper.pid).name() != "sleep":
        time.sleep(0.01)
    with pytest.raises(NotPython, match=r"\(sleep\) is not a CPython process"):
        inspect_process(sleeper.pid)


@pytest.mark.skipif(not PYTHON_311, reason="no python3.11 here")
def test_python_311_is_named_and_refused(spawn) -> None:
    assert PYTHON_311
    old = spawn(PYTHON_311, "-c", "print('ready {}', flush=True); import time; time.sleep(99)")
    version = subprocess.check_output(
        [PYTHON_311, "-c", "import platform; print(platform.python_version())"], text=True
    ).strip()
    with pytest.raises(
        UnsupportedPython, match=rf"runs Python {version}; async-inspect needs 3\.12"
    ):
        inspect_process(old.pid)


def test_stopped_target_is_refused_and_stays_as_it_was(spawn, listener) -> None:
    python = next(path for path in PYTHONS.values() if path)
    target = spawn(python, str(TARGETS / "asyncio_loops.py"), "idle")
    os.kill(target.pid, signal.SIGSTOP)
    while psutil.Process(target.pid).status() != psutil.STATUS_STOPPED:
        time.sleep(0.01)

    with pytest.raises(ProcessStopped, match="kill -CONT"):
        inspect_process(target.pid)
    info = inspect_process(target.pid, allow_stopped=True)
    assert info.stopped
    with pytest.raises(ProcessStopped):
        inject_with_gdb(info, _code(listener))

    assert psutil.Process(target.pid).status() == psutil.STATUS_STOPPED
    os.kill(target.pid, signal.SIGCONT)
    _still_working(target, "idle")


def test_gdb_missing_from_path(spawn, listener, monkeypatch, tmp_path) -> None:
    python = next(path for path in PYTHONS.values() if path)
    target = spawn(python, str(TARGETS / "asyncio_loops.py"), "idle")
    info = inspect_process(target.pid)
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(InjectorMissing, match="gdb"):
        inject_with_gdb(info, _code(listener))
    target.assert_healthy()


def test_ptrace_refused_when_another_tracer_holds_the_target(spawn, listener) -> None:
    if shutil.which("strace") is None:
        pytest.skip("strace is needed to hold the target")
    python = next(path for path in PYTHONS.values() if path)
    target = spawn(python, str(TARGETS / "asyncio_loops.py"), "idle")
    info = inspect_process(target.pid)
    holder = subprocess.Popen(["strace", "-qq", "-o", "/dev/null", "-p", str(target.pid)])
    try:
        while "TracerPid:\t0\n" in Path(f"/proc/{target.pid}/status").read_text():
            time.sleep(0.01)
        with pytest.raises(PermissionDenied, match=f"already traced by PID {holder.pid}"):
            inject_with_gdb(info, _code(listener))
    finally:
        holder.terminate()
        holder.wait(timeout=10)
    while "TracerPid:\t0\n" not in Path(f"/proc/{target.pid}/status").read_text():
        time.sleep(0.01)
    target.assert_healthy()
