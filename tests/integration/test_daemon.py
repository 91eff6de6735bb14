"""The node daemon's life cycle: "containers" are discovered, selected or not, attached,
followed through restarts and exits; the daemon itself restarts or dies; a node without
ptrace and a bad config are one clear line. Selection by Kubernetes metadata and each
table's settings: test_daemon_selection.py."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CLI, INTERPRETERS
from tests.integration.nodes import NEEDS_NAMESPACES, Container, Daemon
from tests.otlp_receiver import OtlpReceiver

PY311 = "/root/.pyenv/versions/3.11.7/bin/python"
pytestmark = NEEDS_NAMESPACES


def test_daemon_attaches_exactly_the_selected_and_follows_them(
    containers: Callable[..., Container], daemons: list[Daemon], receiver: OtlpReceiver
) -> None:
    # GIVEN "containers": two opted in, one not, one opted in on a Python that is too old
    a = containers(ASYNC_INSPECT_ENABLE="1", OTEL_SERVICE_NAME="svc-a")
    b = containers(
        INTERPRETERS[max(INTERPRETERS)], ASYNC_INSPECT_ENABLE="1", OTEL_SERVICE_NAME="svc-b"
    )
    ignored = containers(OTEL_SERVICE_NAME="not-me")
    old = containers(PY311, ASYNC_INSPECT_ENABLE="1") if Path(PY311).exists() else None
    # WHEN the daemon runs with no config
    daemon = Daemon("--endpoint", receiver.endpoint)
    daemons.append(daemon)
    seen = daemon.wait(
        lambda p: (
            p.get(a.pid, {}).get("status") == "attached"
            and p.get(b.pid, {}).get("status") == "attached"
        )
    )
    # THEN it attached exactly the selected ones, through their own /proc/PID/root
    assert ignored.pid not in seen or seen[ignored.pid]["status"] == "not selected"
    _, body = daemon.get("/api/processes")
    everything = {p["pid"]: p for p in json.loads(body)["processes"]}
    if old is not None:
        assert everything[old.pid]["status"] == "unsupported"
        assert "3.11.7" in everything[old.pid]["reason"]
    assert everything[a.pid]["container_id"] == a.id
    # AND each process's spans carry its own container id and service
    assert a.send("request") == "ok" and b.send("request") == "ok"
    spans = receiver.wait_for(
        lambda s: (
            {"svc-a", "svc-b"}
            <= {x.resource["service.name"] for x in s if x.name == "handle_request"}
        )
    )
    by_service = {s.resource["service.name"]: s.resource for s in spans}
    assert by_service["svc-a"]["container.id"] == a.id
    assert by_service["svc-b"]["container.id"] == b.id
    assert by_service["svc-a"]["process.pid"] == a.pid
    assert by_service["svc-a"]["process.pid.in_namespace"] != a.pid  # its own PID namespace
    assert "not-me" not in {s.resource["service.name"] for s in spans}

    # WHEN one service restarts (new PID) and another exits
    a.stop()
    a2 = containers(ASYNC_INSPECT_ENABLE="1", OTEL_SERVICE_NAME="svc-a")
    b.send("quit")
    # THEN the new PID is attached and the exited one is reported as such
    seen = daemon.wait(
        lambda p: (
            p.get(a2.pid, {}).get("status") == "attached"
            and p.get(b.pid, {}).get("status") == "exited"
        )
    )
    assert a2.send("request") == "ok"
    receiver.wait_for(lambda s: any(x.resource["process.pid"] == a2.pid for x in s))

    # WHEN the daemon itself is restarted
    assert daemon.stop() == 0
    assert "detaching from" in daemon.output()
    assert json.loads(a2.send("probe"))["modules"] == []  # it left nothing in the process
    again = Daemon("--endpoint", receiver.endpoint)
    daemons.append(again)
    # THEN it attaches again
    again.wait(lambda p: p.get(a2.pid, {}).get("status") == "attached")
    assert again.stop() == 0


def test_a_daemon_that_dies_leaves_nothing_in_its_targets(
    containers: Callable[..., Container], daemons: list[Daemon], tmp_path: Path
) -> None:
    # GIVEN a daemon whose agents give up on a lost collector after 2 s, attached to a
    # "container" (selected by a token of this test only)
    token = secrets.token_hex(8)
    app = containers(ASYNC_INSPECT_TEST_RUN=token)
    config = tmp_path / "daemon.toml"
    config.write_text(
        f'[collector]\norphan_timeout = 2\n\n[[select]]\nenv = "ASYNC_INSPECT_TEST_RUN={token}"\n'
    )
    daemon = Daemon("--config", str(config))
    daemons.append(daemon)
    daemon.wait(lambda p: p.get(app.pid, {}).get("status") == "attached")
    its_tmp = Path(f"/proc/{app.pid}/root/tmp")
    assert list(its_tmp.glob("async-inspect-*")), "the rendezvous folder is where we look"
    # WHEN the daemon dies without detaching (SIGKILL: a crash, an OOM kill)
    daemon.process.kill()
    daemon.process.wait(10)
    # THEN the agent stops on its own and removes the daemon's folder from the target's /tmp
    deadline = time.monotonic() + 15
    while list(its_tmp.glob("async-inspect-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not list(its_tmp.glob("async-inspect-*"))
    # AND nothing of ours is left in the process, which runs on
    assert json.loads(app.send("probe"))["modules"] == []
    assert app.send("request") == "ok"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[[select]]\nnamespaces = 'x'", "select[0] has unknown selector key(s) namespaces"),
        ("[collector]\nintervall = 3", "[collector] has unknown key(s) intervall"),
        ("[[select]]\nenv = 3", "select[0].env must be a non-empty string"),
        (
            "[[select]]\nenv = 'A=1'\nsettings = { endpoint = 'http://x:4317' }",
            "select[0].settings has setting(s) that are not per process: endpoint",
        ),
    ],
)
def test_bad_config_is_one_line(tmp_path: Path, content: str, expected: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(content)
    result = subprocess.run(
        [*CLI, "collector", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 64
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_unreadable_config_is_one_line() -> None:
    result = subprocess.run(
        [*CLI, "collector", "--config", "/no/such.toml"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 64
    assert result.stderr.strip() == (
        "async-inspect: error: cannot read config file /no/such.toml: No such file or directory "
        "(check --config / $ASYNC_INSPECT_CONFIG)"
    )


def test_a_node_where_ptrace_is_forbidden_is_reported(daemons: list[Daemon]) -> None:
    # GIVEN a daemon without CAP_SYS_PTRACE (as a pod without the capability would be)
    daemon = Daemon(prefix=("setpriv", "--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace"))
    daemons.append(daemon)
    # THEN /readyz says so in one line, and the daemon keeps serving
    deadline = time.monotonic() + 20
    while (status := daemon.get("/readyz"))[0] != 503 or "starting" in status[1]:
        assert time.monotonic() < deadline, (status, daemon.output())
        time.sleep(0.2)
    assert status[1].startswith("ptrace is not allowed: CAP_SYS_PTRACE is missing")
    assert daemon.get("/healthz") == (200, "ok\n")
    assert daemon.stop() == 0
