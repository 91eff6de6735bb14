"""`async-inspect attach` / `detach`: real targets (3.12/3.13/3.14), spans at a real receiver,
and the target checked from the inside afterwards: nothing of ours left in it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from profiler.agent import accelerator
from tests.conftest import CLI, INTERPRETERS, interpreter_params
from tests.integration.probes import IN_NAMESPACES, Session, Target
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

ATTACH_LATENCY = 2.0  # from injection start: the requirement
CLI_START_ALLOWANCE = 10.0  # importing our CLI (OpenTelemetry, gRPC, aiohttp) on a busy machine


def pod(python: str) -> Target:
    """An idle probe_app in namespaces of its own with a private /tmp: a stand-in for a
    container."""
    return Target(python, "idle", prefix=IN_NAMESPACES)


def spec_trees(spans: list[ReceivedSpan]) -> list[list[str]]:
    """[request, children..., grandchildren...] names for every handle_request span."""
    trees = []
    for request in (s for s in spans if s.name == "handle_request"):
        kids = [s for s in spans if s.parent_span_id == request.span_id]
        grandkids = [s for k in kids for s in spans if s.parent_span_id == k.span_id]
        trees.append(
            ["handle_request", *sorted(k.name for k in kids), *[g.name for g in grandkids]]
        )
    return trees


SPEC_TREE = ["handle_request", "auth_user", "fetch_data", "db_query"]


@pytest.mark.parametrize("mode", ["busy", "idle", "thread", "multi"])
@pytest.mark.parametrize("version", interpreter_params())
def test_attach_traces_then_detach_leaves_nothing(
    version: str, mode: str, receiver: OtlpReceiver, targets: list[Target]
) -> None:
    # GIVEN a running target, probed from the inside before anything happens
    target = Target(INTERPRETERS[version], mode)
    targets.append(target)
    before = [target.probe(port) for port in target.ports]
    # WHEN async-inspect attaches
    session = Session(target.pid, "--endpoint", receiver.endpoint, "--no-tree")
    total = session.wait_for("attached")
    # THEN it takes effect within 2 s of the injection starting (the CLI reports it), and
    # the whole command, start-up included, stays within a bound for a loaded machine
    took = float(session.lines[-1].split(" in ", 1)[1].split("s ", 1)[0])
    assert took < ATTACH_LATENCY, session.lines[-1]
    # AND the agent runs the compiled callbacks whenever this installation built them
    assert ("accelerated" in session.lines[-1]) == accelerator.available()[0], session.lines[-1]
    assert total < ATTACH_LATENCY + CLI_START_ALLOWANCE, total
    # AND requests on every loop come out as the spec's tree
    for port in target.ports:
        assert target.send("request", port) == "ok"
    # WHEN Ctrl-C
    status, stderr = session.interrupt()
    # THEN it detached cleanly and flushed
    assert status == 0, stderr
    assert f"detached from PID {target.pid}" in stderr
    spans = receiver.wait_for(lambda s: len(spec_trees(s)) >= len(target.ports))
    assert all(tree == SPEC_TREE for tree in spec_trees(spans)), spec_trees(spans)
    assert all(s.resource["process.pid"] == target.pid for s in spans)
    # AND nothing of ours is left in the target, which still serves
    after = [target.probe(port) for port in target.ports]
    assert after == before
    assert target.alive()


def test_a_second_sigterm_does_not_cut_the_detach_short(targets: list[Target]) -> None:
    # GIVEN an attached session
    target = Target(INTERPRETERS[min(INTERPRETERS)], "idle")
    targets.append(target)
    session = Session(target.pid, "--no-tree")
    session.wait_for("attached")
    # WHEN SIGTERM comes twice, as `timeout` sends it (to the command, then to its group)
    session.process.send_signal(signal.SIGTERM)
    time.sleep(0.02)  # a separate signal, while the detach waits for the agent
    session.process.send_signal(signal.SIGTERM)
    status, stderr = session.finish()
    # THEN the first one detaches cleanly, and the second neither interrupts it nor shows a
    # traceback
    assert status == 0, stderr
    assert f"detached from PID {target.pid}" in stderr
    assert "Traceback" not in stderr and "Task was destroyed" not in stderr, stderr
    assert target.alive()


def test_attach_twice_is_harmless(receiver: OtlpReceiver, targets: list[Target]) -> None:
    target = Target(INTERPRETERS[min(INTERPRETERS)], "idle")
    targets.append(target)
    first = Session(target.pid, "--endpoint", receiver.endpoint, "--no-tree")
    first.wait_for("attached")
    second = Session(target.pid, "--no-tree")
    status, stderr = second.finish()
    assert status != 0
    assert "already attached" in stderr and "Traceback" not in stderr
    assert target.send("request") == "ok"
    status, stderr = first.interrupt()
    assert status == 0, stderr
    assert receiver.wait_for(lambda s: spec_trees(s) == [SPEC_TREE])
    assert target.probe()["modules"] == []


def test_detach_from_another_shell(receiver: OtlpReceiver, targets: list[Target]) -> None:
    target = Target(INTERPRETERS[max(INTERPRETERS)], "idle")
    targets.append(target)
    session = Session(target.pid, "--endpoint", receiver.endpoint, "--no-tree")
    session.wait_for("attached")
    assert target.send("request") == "ok"
    detach = subprocess.run(
        [*CLI, "detach", str(target.pid)], capture_output=True, text=True, timeout=60
    )
    assert detach.returncode == 0, detach.stderr
    assert "detached from PID" in detach.stderr
    status, stderr = session.finish()
    assert status == 0, stderr
    assert receiver.wait_for(lambda s: spec_trees(s) == [SPEC_TREE])
    assert target.probe()["modules"] == [] and target.alive()


def test_target_exiting_ends_the_session_with_what_was_captured(
    receiver: OtlpReceiver, targets: list[Target]
) -> None:
    target = Target(INTERPRETERS[min(INTERPRETERS)], "idle")
    targets.append(target)
    folders = set(Path("/tmp").glob("async-inspect-*"))
    session = Session(target.pid, "--endpoint", receiver.endpoint, "--no-tree")
    session.wait_for("attached")
    assert target.send("request") == "ok"
    assert target.send("quit") == "bye"
    status, stderr = session.finish()
    assert status == 0, stderr
    assert f"PID {target.pid} exited" in stderr
    assert target.process.wait(10) == 0
    assert receiver.wait_for(lambda s: spec_trees(s) == [SPEC_TREE])
    # The rendezvous folder is gone too, though /proc/PID/root went with the target
    assert set(Path("/tmp").glob("async-inspect-*")) == folders


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) not installed")
def test_attach_to_a_target_in_other_namespaces(
    receiver: OtlpReceiver, targets: list[Target], tmp_path: Path
) -> None:
    # GIVEN a target in its own mount and PID namespaces, with a private /tmp
    target = pod(INTERPRETERS[min(INTERPRETERS)])
    targets.append(target)
    inner = subprocess.run(
        ["pgrep", "-f", "-P", str(target.pid), "probe_app"], capture_output=True, text=True
    )
    pid = int(inner.stdout.split()[0]) if inner.stdout.strip() else _descendant(target.pid)
    assert Path(f"/proc/{pid}/ns/mnt").resolve() != Path("/proc/self/ns/mnt").resolve()
    # WHEN attaching by the host's PID
    session = Session(pid, "--endpoint", receiver.endpoint, "--no-tree")
    session.wait_for("attached")
    assert target.send("request") == "ok"
    status, stderr = session.interrupt()
    # THEN spans arrive and the socket folder was made (and removed) in the target's /tmp
    assert status == 0, stderr
    spans = receiver.wait_for(lambda s: spec_trees(s) == [SPEC_TREE])
    assert spans[0].resource["process.pid"] == pid
    assert os.listdir(f"/proc/{pid}/root/tmp") == []
    assert target.probe()["modules"] == []


def _descendant(pid: int) -> int:

    for child in psutil.Process(pid).children(recursive=True):
        if "probe_app" in " ".join(child.cmdline()):
            return int(child.pid)
    raise AssertionError("no probe_app in the namespace")


def attach_error(pid: int, env: dict[str, str] | None = None, *args: str) -> tuple[int, str]:
    result = subprocess.run(
        [*CLI, "attach", str(pid), "--no-tree", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return result.returncode, lines[0]


def test_no_such_pid() -> None:
    status, line = attach_error(4_000_000)
    assert status == 2 and "no process with PID 4000000" in line


def test_not_a_python_process() -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        status, line = attach_error(sleeper.pid)
        assert status == 2 and "not a CPython process" in line
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.skipif(
    not Path("/root/.pyenv/versions/3.11.7/bin/python").exists(),
    reason="no CPython 3.11 on this machine",
)
def test_python_too_old(targets: list[Target]) -> None:
    target = Target("/root/.pyenv/versions/3.11.7/bin/python", "idle")
    targets.append(target)
    status, line = attach_error(target.pid)
    assert status == 2 and "3.11.7" in line and "3.12" in line
    assert target.alive()


def test_stopped_process(targets: list[Target]) -> None:
    target = Target(INTERPRETERS[min(INTERPRETERS)], "idle")
    targets.append(target)
    os.kill(target.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{target.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, "SIGSTOP did not stop the target"
        time.sleep(0.01)
    try:
        status, line = attach_error(target.pid)
        assert status == 2 and "stopped" in line and "kill -CONT" in line
    finally:
        os.kill(target.pid, signal.SIGCONT)
    assert target.alive()


def test_gdb_missing_for_a_312_target(targets: list[Target], tmp_path: Path) -> None:
    target = Target(INTERPRETERS[min(INTERPRETERS)], "idle")
    targets.append(target)
    env = {**os.environ, "PATH": str(tmp_path)}  # no gdb anywhere on it
    status, line = attach_error(target.pid, env)
    assert status == 2 and "gdb" in line and "install" in line
    assert target.alive() and target.probe()["modules"] == []


def test_an_output_it_cannot_open_leaves_the_target_as_it_was(
    targets: list[Target], tmp_path: Path
) -> None:
    # GIVEN a target, and an --output in a folder that does not exist
    target = Target(INTERPRETERS[min(INTERPRETERS)], "idle")
    targets.append(target)
    before = set(Path("/tmp").glob("async-inspect-*"))
    # WHEN attach is asked to write there
    status, line = attach_error(target.pid, None, "--output", str(tmp_path / "no" / "x.jsonl"))
    # THEN one line says so, and nothing is left in the target: no rendezvous folder either
    assert status != 0 and "cannot write" in line and "choose another --output" in line
    assert set(Path("/tmp").glob("async-inspect-*")) == before
    assert target.alive() and target.probe()["modules"] == []


@pytest.mark.skipif("3.14" not in INTERPRETERS, reason="no CPython 3.14 on this machine")
def test_remote_debugging_disabled_is_respected(targets: list[Target]) -> None:
    target = Target(INTERPRETERS["3.14"], "idle", PYTHON_DISABLE_REMOTE_DEBUG="1")
    targets.append(target)
    status, line = attach_error(target.pid)
    assert status == 2 and "remote debugging disabled" in line
    assert target.alive() and target.probe()["modules"] == []


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run a target as another user",
)
@pytest.mark.skipif(
    "3.14" not in INTERPRETERS or not INTERPRETERS["3.14"].startswith("/opt"),
    reason="needs a CPython that user nobody can run (/opt/python3.14)",
)
def test_permission_denied(targets: list[Target]) -> None:
    # GIVEN a target of another user, and a CLI that is root but without CAP_SYS_PTRACE
    target = Target(
        INTERPRETERS["3.14"],
        "idle",
        prefix=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
    )
    targets.append(target)
    no_ptrace = ["setpriv", "--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace"]
    result = subprocess.run(
        [*no_ptrace, *CLI, "attach", str(target.pid)], capture_output=True, text=True, timeout=60
    )
    # THEN one line says what to do, and the target is unharmed
    assert result.returncode == 2, result.stderr
    assert "root or with CAP_SYS_PTRACE" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert target.alive()


def test_doctor_reports_a_target(targets: list[Target]) -> None:
    target = Target(INTERPRETERS[min(INTERPRETERS)], "idle")
    targets.append(target)
    result = subprocess.run(
        [*CLI, "doctor", str(target.pid)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout
    assert "ok    CPython 3.12" in result.stdout and "attach should work" in result.stdout
    assert target.probe()["modules"] == []


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


CHART_CAPABILITIES = "-all,+sys_ptrace,+chown,+dac_override,+fowner,+kill"


@pytest.mark.skipif(
    shutil.which("unshare") is None or shutil.which("setpriv") is None or os.geteuid() != 0,
    reason="needs root, unshare and setpriv to stand in for a container",
)
@pytest.mark.parametrize("version", interpreter_params())
def test_attach_from_a_container_with_only_the_charts_capabilities(
    version: str, receiver: OtlpReceiver, targets: list[Target], tmp_path: Path
) -> None:
    # GIVEN a target in its own mount + PID namespaces ("a pod"), and the CLI in yet another
    # mount namespace holding only the capabilities the Helm chart grants ("the DaemonSet")
    target = pod(INTERPRETERS[version])
    targets.append(target)
    pid = _descendant(target.pid)
    caps = CHART_CAPABILITIES
    session = Session(
        pid,
        *("--endpoint", receiver.endpoint, "--no-tree"),
        prefix=[
            *("unshare", "--mount", "setpriv"),
            f"--inh-caps={caps}",
            f"--ambient-caps={caps}",
            f"--bounding-set={caps}",
        ],
    )
    # WHEN it attaches (gdb without CAP_SYS_ADMIN must read the target's files itself)
    session.wait_for("attached")
    assert target.send("request") == "ok"
    status, stderr = session.interrupt()
    # THEN it works end to end and leaves nothing behind
    assert status == 0, stderr
    receiver.wait_for(lambda s: spec_trees(s) == [SPEC_TREE])
    assert target.probe()["modules"] == []
