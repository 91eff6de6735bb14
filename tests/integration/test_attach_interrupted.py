"""`async-inspect attach` interrupted: during injection (the target untouched), while the
agent starts (the session waits for it, then detaches it), and as it reports (before the
`attached` line: said, then detached)."""

from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from collector.settings import resolve
from profiler.cli.attach import attach_session
from profiler.cli.report import Reporter
from tests.conftest import INTERPRETERS, TARGETS, interpreter_params
from tests.integration.probes import Session, Target


def test_ctrl_c_during_injection_leaves_the_target_unharmed() -> None:
    # GIVEN a 3.12 target that never reaches a safe point by itself (pure CPU, one thread)
    python = INTERPRETERS[min(INTERPRETERS)]
    target = subprocess.Popen(
        [python, str(TARGETS / "cpu_bound.py")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert target.stdout is not None and target.stdout.readline() == "ready\n"
        session = Session(target.pid, "--timeout", "30", "--no-tree")
        time.sleep(2.5)  # gdb is attached and waiting for a safe point
        status, stderr = session.interrupt()
        assert status == 130, stderr
        assert "untouched" in stderr and "Traceback" not in stderr
        status_file = Path(f"/proc/{target.pid}/status").read_text()
        assert "\nState:\tR" in status_file and "\nTracerPid:\t0\n" in status_file
        cpu = Path(f"/proc/{target.pid}/stat").read_text().split()[13]
        time.sleep(0.3)
        assert Path(f"/proc/{target.pid}/stat").read_text().split()[13] != cpu  # still running
    finally:
        target.kill()
        target.wait()


def _unix_sockets(pid: int) -> int:
    return len(psutil.Process(pid).net_connections(kind="unix"))


@pytest.mark.parametrize("version", interpreter_params())
def test_ctrl_c_while_the_agent_starts_waits_for_it_then_detaches(
    version: str, targets: list[Target]
) -> None:
    # GIVEN a target whose agent takes a while to start: 60,000 pending tasks to adopt, ~0.5 s
    # (20,000 left ~0.2 s, which a Ctrl-C held back until gdb has left could miss on a busy
    # machine: the session then detached as after `attached`, without saying it waited)
    target = Target(INTERPRETERS[version], "crowd")
    targets.append(target)
    before, sockets = target.probe(), _unix_sockets(target.pid)
    session = Session(target.pid, "--no-tree")
    # WHEN Ctrl-C as soon as the agent has connected to the session, before it reported
    deadline = time.monotonic() + 30
    while _unix_sockets(target.pid) == sockets:
        assert time.monotonic() < deadline, "the agent never connected"
        time.sleep(0.005)
    status, stderr = session.interrupt()
    # THEN the session lets it finish starting, then detaches it: nothing of ours is left
    assert status == 0, stderr
    assert f"interrupted while the agent starts in PID {target.pid}" in stderr, stderr
    assert f"detached from PID {target.pid}" in stderr and "Traceback" not in stderr
    assert target.probe() == before
    assert target.alive()


class _InterruptedAsAnnounced(Reporter):
    """Ctrl-C at the one point a real one can land only by chance: the agent has reported,
    the `attached` line is not out yet (gdb holds a Ctrl-C back until it has left)."""

    def say(self, message: str) -> None:
        if message.startswith("attached to PID"):
            raise KeyboardInterrupt
        super().say(message)


@pytest.mark.parametrize("version", interpreter_params())
def test_ctrl_c_as_the_agent_reports_says_so_then_detaches(
    version: str, targets: list[Target]
) -> None:
    # GIVEN a target, and a session interrupted just after its agent reported
    target = Target(INTERPRETERS[version], "idle")
    targets.append(target)
    before = target.probe()
    said = io.StringIO()
    # WHEN it attaches
    status = attach_session(
        target.pid, resolve({}, {}), _InterruptedAsAnnounced(False, said), False, None, 10.0
    )
    # THEN it says what happened, and detaches: nothing of ours is left
    lines, pid = said.getvalue().splitlines(), target.pid
    assert status == 0, lines
    assert f"async-inspect: interrupted as the agent in PID {pid} reported; detaching" in lines
    assert lines[-1] == f"async-inspect: detached from PID {pid}"
    assert target.probe() == before
    assert target.alive()
