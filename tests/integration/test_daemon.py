"""The node daemon: "containers" (mount + PID namespaces via unshare, each in its own cgroup
so it has a container id) are discovered, selected or not, attached, followed through
restarts and exits; the daemon itself restarts; Kubernetes metadata from recorded API
responses; bad input keeps it serving."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CLI, INTERPRETERS, TARGETS, outside_tmp
from tests.otlp_receiver import OtlpReceiver

CGROUP = Path("/sys/fs/cgroup/pids")
PY311 = "/root/.pyenv/versions/3.11.7/bin/python"
pytestmark = [
    pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) missing"),
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and cgroups need root"),
    pytest.mark.skipif(not CGROUP.is_dir(), reason="no cgroup v1 pids hierarchy to give ids"),
]


class Container:
    """A probe_app in its own mount+PID namespaces, private /tmp, and a cgroup named by a
    64-hex container id (as docker/containerd name theirs)."""

    def __init__(self, python: str, env: dict[str, str]) -> None:
        self.id = secrets.token_hex(32)
        self.cgroup = CGROUP / "async-inspect-test" / self.id
        self.cgroup.mkdir(parents=True)
        script = outside_tmp(TARGETS / "probe_app.py")
        inner = f"mount -t tmpfs tmpfs /tmp && exec {python} {script} idle"
        self.process = subprocess.Popen(
            [
                "sh",
                "-c",
                f"echo $$ > {self.cgroup}/cgroup.procs && exec unshare --mount --pid "
                f'--fork --mount-proc --kill-child sh -c "{inner}"',
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        assert line[:1] == ["ready"], self.process.stderr.read() if self.process.stderr else ""
        self.port = int(line[1])
        self.pid = next(
            child.pid
            for child in psutil.Process(self.process.pid).children(recursive=True)
            if "probe_app" in " ".join(child.cmdline())
        )

    def send(self, line: str) -> str:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as conn:
            conn.sendall(line.encode() + b"\n")
            return conn.makefile().readline().strip()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # unshare --kill-child takes the app with it
        self.process.wait(10)
        deadline = time.monotonic() + 10
        while psutil.pid_exists(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            self.cgroup.rmdir()
        except OSError:
            pass


@pytest.fixture
def containers() -> Iterator[Callable[..., Container]]:
    started: list[Container] = []

    def start(python: str | None = None, **env: str) -> Container:
        container = Container(python or INTERPRETERS[min(INTERPRETERS)], env)
        started.append(container)
        return container

    yield start
    for container in started:
        container.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Daemon:
    """`async-inspect collector` as a subprocess, with its API on a free port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = Path(f"/tmp/async-inspect-daemon-{self.port}.log")
        self.process = subprocess.Popen(
            [
                *CLI,
                "collector",
                "--metrics-port",
                str(self.port),
                "--metrics-address",
                "127.0.0.1",
                "--interval",
                "0.5",
                "--no-tree",
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
            env={**os.environ, **(env or {})},
        )

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError:
            return 0, ""

    def processes(self) -> dict[int, dict[str, Any]]:
        status, body = self.get("/api/processes")
        return {p["pid"]: p for p in json.loads(body)["processes"]} if status == 200 else {}

    def wait(self, predicate: Callable[[dict[int, dict[str, Any]]], bool], timeout: float = 20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            processes = self.processes()
            if processes and predicate(processes):
                return processes
            time.sleep(0.2)
        raise AssertionError(f"daemon state never matched: {self.processes()}\n{self.output()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
        daemon.log.unlink(missing_ok=True)


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


def _fake_kube_api(pods: dict[str, Any]) -> tuple[str, Callable[[], None], list[str]]:
    """A loopback API server answering GET /api/v1/pods with a recorded PodList."""
    seen_selectors: list[str] = []

    async def list_pods(request: web.Request) -> web.Response:
        seen_selectors.append(request.query.get("fieldSelector", ""))
        if request.headers.get("Authorization") != "Bearer test-token":
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        return web.json_response(pods)

    app = web.Application()
    app.router.add_get("/api/v1/pods", list_pods)
    runner = web.AppRunner(app)
    ready = threading.Event()
    port_holder: list[int] = []
    import asyncio

    loop = asyncio.new_event_loop()

    async def serve() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_holder.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        ready.set()

    thread = threading.Thread(
        target=lambda: (loop.run_until_complete(serve()), loop.run_forever()), daemon=True
    )
    thread.start()
    ready.wait(10)

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)

    return f"http://127.0.0.1:{port_holder[0]}", stop, seen_selectors


def test_kubernetes_metadata_and_selection(
    containers: Callable[..., Container],
    daemons: list[Daemon],
    receiver: OtlpReceiver,
    tmp_path: Path,
) -> None:
    # GIVEN two containers the (recorded) Kubernetes API knows as pods of node-1
    shop = containers()
    system = containers()
    recorded = (Path(__file__).parent.parent / "data" / "k8s_pods.json").read_text()
    pods = json.loads(
        recorded.replace("__SHOP_CONTAINER__", shop.id).replace("__SYSTEM_CONTAINER__", system.id)
    )
    url, stop_api, selectors = _fake_kube_api(pods)
    token = tmp_path / "token"
    token.write_text("test-token\n")
    config = tmp_path / "config.toml"
    config.write_text(f'''
endpoint = "{receiver.endpoint}"
[[select]]
annotation = "async-inspect.io/enabled=true"
[[exclude_processes]]
namespace = "kube-system"
''')
    try:
        daemon = Daemon(
            "--config",
            str(config),
            env={
                "ASYNC_INSPECT_KUBE_API": url,
                "ASYNC_INSPECT_KUBE_TOKEN_FILE": str(token),
                "NODE_NAME": "node-1",
            },
        )
        daemons.append(daemon)
        # THEN the annotated pod is attached and the kube-system one is excluded (exclude wins)
        seen = daemon.wait(
            lambda p: p.get(shop.pid, {}).get("status") == "attached" and system.pid in p
        )
        assert seen[system.pid]["status"] == "not selected"
        assert "excluded by [namespace=kube-system]" in seen[system.pid]["reason"]
        assert seen[shop.pid]["pod"] == {
            "name": "shop-7d9f8c6b5-x2k4q",
            "namespace": "shop",
            "container": "web",
        }
        assert selectors and all(s == "spec.nodeName=node-1" for s in selectors)
        # AND its spans carry the pod, namespace, container and node; the service is the app's
        assert shop.send("request") == "ok"
        spans = receiver.wait_for(lambda s: any(x.name == "handle_request" for x in s))
        resource = next(s for s in spans if s.name == "handle_request").resource
        assert resource["k8s.pod.name"] == "shop-7d9f8c6b5-x2k4q"
        assert resource["k8s.namespace.name"] == "shop"
        assert resource["k8s.container.name"] == "web"
        assert resource["k8s.node.name"] == "node-1"
        assert resource["service.name"] == "shop"  # app.kubernetes.io/name
        assert daemon.get("/readyz") == (200, "ready\n")
    finally:
        stop_api()


def test_each_select_table_tells_its_agents_what_to_do(
    containers: Callable[..., Container],
    daemons: list[Daemon],
    receiver: OtlpReceiver,
    tmp_path: Path,
) -> None:
    # GIVEN a daemon recording everything, but one service in bursts 25 % of the time
    bursty = containers(OTEL_SERVICE_NAME="svc-bursty")
    full = containers(INTERPRETERS[max(INTERPRETERS)], OTEL_SERVICE_NAME="svc-full")
    config = tmp_path / "config.toml"
    config.write_text(f"""
endpoint = "{receiver.endpoint}"
[[select]]
service = "svc-bursty"
settings = {{ sampler = "traceidratio", sampler_arg = 0.25, burst = 0.2 }}
[[select]]
service = "svc-full"
""")
    daemon = Daemon("--config", str(config))
    daemons.append(daemon)
    # WHEN both are attached
    seen = daemon.wait(
        lambda p: all(p.get(c.pid, {}).get("status") == "attached" for c in (bursty, full))
    )
    # THEN each agent got its table's settings, as the API shows
    assert seen[bursty.pid]["settings"] == {
        "sampler": "traceidratio",
        "sampler_arg": 0.25,
        "burst": 0.2,
    }
    assert seen[full.pid]["settings"] == {}
    ps = subprocess.run([*CLI, "ps", "--api", f"http://127.0.0.1:{daemon.port}"],
                        capture_output=True, text=True, timeout=60)  # fmt: skip
    rows = {line.split()[0]: line for line in ps.stdout.splitlines()[1:]}
    assert "[sampler=traceidratio, sampler_arg=0.25, burst=0.2] via " in rows[str(bursty.pid)]
    assert "attached" in rows[str(full.pid)] and "[" not in rows[str(full.pid)]
    # AND the agents report doing so: one records a quarter of the time, the other always
    shares = _wait_for_shares(daemon, {"svc-bursty", "svc-full"})
    assert shares == {"svc-bursty": 0.25, "svc-full": 1.0}
    assert full.send("request") == "ok"
    receiver.wait_for(
        lambda s: any(x.resource["service.name"] == "svc-full" and x.name == "handle_request"
                      for x in s)
    )  # fmt: skip
    assert daemon.stop() == 0


def _wait_for_shares(daemon: Daemon, services: set[str]) -> dict[str, float]:
    """async_inspect_recorded_share by service, once every one in `services` reported."""
    deadline = time.monotonic() + 20
    shares: dict[str, float] = {}
    while time.monotonic() < deadline:
        status, text = daemon.get("/metrics")
        if status == 200:
            shares = {
                sample.labels["service_name"]: sample.value
                for family in text_string_to_metric_families(text)
                if family.name == "async_inspect_recorded_share"
                for sample in family.samples
            }
            if services <= set(shares):
                return shares
        time.sleep(0.3)
    raise AssertionError(f"no share for {services - set(shares)}:\n{daemon.output()}")


def test_an_unreachable_kubernetes_api_is_reported_and_the_daemon_keeps_serving(
    containers: Callable[..., Container], daemons: list[Daemon]
) -> None:
    target = containers(ASYNC_INSPECT_ENABLE="1")
    daemon = Daemon(
        env={"ASYNC_INSPECT_KUBE_API": f"http://127.0.0.1:{free_port()}", "NODE_NAME": "node-1"}
    )
    daemons.append(daemon)
    daemon.wait(lambda p: p.get(target.pid, {}).get("status") == "attached")
    status, body = daemon.get("/readyz")
    assert status == 503 and body.startswith("Kubernetes API unreachable (http://127.0.0.1:")
    assert len(body.strip().splitlines()) == 1
    assert daemon.get("/healthz") == (200, "ok\n")
    assert daemon.stop() == 0


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
    daemon = Daemon.__new__(Daemon)
    daemon.port = free_port()
    daemon.log = Path(f"/tmp/async-inspect-daemon-{daemon.port}.log")
    daemon.process = subprocess.Popen(
        [
            "setpriv",
            "--inh-caps=-sys_ptrace",
            "--bounding-set=-sys_ptrace",
            *CLI,
            "collector",
            "--metrics-port",
            str(daemon.port),
            "--metrics-address",
            "127.0.0.1",
            "--interval",
            "0.5",
        ],
        stdout=subprocess.DEVNULL,
        stderr=daemon.log.open("w"),
    )
    daemons.append(daemon)
    # THEN /readyz says so in one line, and the daemon keeps serving
    deadline = time.monotonic() + 20
    while (status := daemon.get("/readyz"))[0] != 503 or "starting" in status[1]:
        assert time.monotonic() < deadline, (status, daemon.output())
        time.sleep(0.2)
    assert status[1].startswith("ptrace is not allowed: CAP_SYS_PTRACE is missing")
    assert daemon.get("/healthz") == (200, "ok\n")
    assert daemon.stop() == 0
