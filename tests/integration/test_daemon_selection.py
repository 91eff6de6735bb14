"""The node daemon's selection: by Kubernetes metadata (recorded API responses from a
loopback server), an unreachable API, and what each [[select]] table tells its agents."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CLI, INTERPRETERS
from tests.integration.nodes import NEEDS_NAMESPACES, Container, Daemon, free_port
from tests.otlp_receiver import OtlpReceiver

pytestmark = NEEDS_NAMESPACES


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
    # GIVEN a daemon recording everything, with a rule that names auth_user's spans; one
    # service in bursts 25 % of the time, one with a rule of its own for the same function
    bursty = containers(OTEL_SERVICE_NAME="svc-bursty")
    renamed = containers(OTEL_SERVICE_NAME="svc-renamed")
    full = containers(INTERPRETERS[max(INTERPRETERS)], OTEL_SERVICE_NAME="svc-full")
    config = tmp_path / "config.toml"
    config.write_text(f"""
endpoint = "{receiver.endpoint}"
[[rules]]
match = "*:auth_user"
name = "authenticate"
attributes = {{ team = "identity" }}

[[select]]
service = "svc-bursty"
settings = {{ sampler = "traceidratio", sampler_arg = 0.25, burst = 0.2 }}
[[select]]
service = "svc-renamed"
[[select.settings.rules]]
match = "*:auth_user"
name = "login"
[[select]]
service = "svc-full"
""")
    daemon = Daemon("--config", str(config))
    daemons.append(daemon)
    # WHEN all three are attached
    apps = (bursty, renamed, full)
    seen = daemon.wait(lambda p: all(p.get(c.pid, {}).get("status") == "attached" for c in apps))
    # THEN each agent got its table's settings, as the API and `ps` show
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
    assert "[rules=1] via " in rows[str(renamed.pid)]
    assert "attached" in rows[str(full.pid)] and "[" not in rows[str(full.pid)]
    # AND the agents report doing so: one records a quarter of the time, the others always
    shares = _wait_for_shares(daemon, {"svc-bursty", "svc-renamed", "svc-full"})
    assert shares == {"svc-bursty": 0.25, "svc-renamed": 1.0, "svc-full": 1.0}
    # AND a table's rule comes before the daemon's, which names the other services' spans
    assert renamed.send("request") == "ok" and full.send("request") == "ok"
    spans = receiver.wait_for(
        lambda s: (
            {"svc-renamed", "svc-full"}
            <= {x.resource["service.name"] for x in s if x.name in ("login", "authenticate")}
        )
    )
    auth = ("login", "authenticate", "auth_user")
    named = {(x.resource["service.name"], x.name) for x in spans if x.name in auth}
    assert named == {("svc-renamed", "login"), ("svc-full", "authenticate")}
    full_auth = next(x for x in spans if x.name == "authenticate")
    assert full_auth.attributes["team"] == "identity"
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
