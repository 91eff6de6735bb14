"""A real Prometheus for tests, and the PromQL a Grafana dashboard sends it.

`PrometheusServer` runs the `prometheus` binary on 127.0.0.1:<free port> with a temporary
storage directory and a config from `scrape_config` (1s scrape and rule evaluation), waits
until it is ready, answers queries through the HTTP API, and is always stopped: terminated,
killed if it lingers, and killed by the kernel if the test process dies first.

`dashboard_queries` lists every PromQL expression of a dashboard's panels; `substitute` fills
in its template variables the way Grafana would before sending them.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

__all__ = [
    "PROMETHEUS",
    "PROMTOOL",
    "DashboardQuery",
    "PrometheusError",
    "PrometheusServer",
    "dashboard_queries",
    "free_port",
    "scrape_config",
    "substitute",
]

T = TypeVar("T")


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    return f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None


PROMETHEUS = _binary("prometheus")
PROMTOOL = _binary("promtool")


class PrometheusError(Exception):
    """Prometheus refused a request (a bad query, say) or did not start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrape_config(
    targets: list[str], rule_files: list[Path], interval: str = "1s", job: str = "async-inspect"
) -> str:
    """A Prometheus config (JSON is YAML) scraping `targets` and evaluating `rule_files`."""
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
    }
    return json.dumps(config, indent=2)


def _die_with_parent() -> None:
    # Runs in the child before exec: if the test process dies, the kernel kills Prometheus.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class PrometheusServer:
    """`with PrometheusServer(config, workdir) as prometheus:` a ready server, then none."""

    def __init__(self, config: str, workdir: Path, binary: str | None = PROMETHEUS) -> None:
        if binary is None:
            raise PrometheusError("no prometheus binary (apt-get install prometheus)")
        self.binary = binary
        self.workdir = workdir
        self.config_file = workdir / "prometheus.yml"
        self.config_file.write_text(config)
        self.log_file = workdir / "prometheus.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> Self:
        """Start it and wait until /-/ready answers; a lost race for the port is retried."""
        for _ in range(3):
            self.port = free_port()
            with self.log_file.open("ab") as log:
                self.process = subprocess.Popen(
                    [
                        self.binary,
                        f"--config.file={self.config_file}",
                        f"--storage.tsdb.path={self.workdir / 'data'}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--log.level=warn",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent,
                )
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise PrometheusError(f"prometheus did not start:\n{self.log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        """Terminate (SIGKILL after 10 s); idempotent."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def api(self, path: str, **params: str) -> Any:
        """The `data` of a successful /api/v1 answer; PrometheusError with its message else."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector `expr` evaluates to now: [{"metric": {...}, "value": [t, "v"]}]."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr!r} is a {data['resultType']}, not a vector")
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts: each with labels, annotations, state (pending|firing), value."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets: each with scrapeUrl, health (up|down|unknown), lastError."""
        targets: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return targets

    def wait_for(self, what: str, found: Callable[[], T | None], timeout: float = 60) -> T:
        """Poll `found` until it returns something; on timeout fail naming `what`."""
        deadline = time.monotonic() + timeout
        while True:
            result = found()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.25)


@dataclass(frozen=True)
class DashboardQuery:
    """One PromQL expression of a dashboard: the panel (or variable) it belongs to."""

    where: str
    expr: str


_LABEL_VALUES = re.compile(r"label_values\((?:(.+),\s*)?(\w+)\)")


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def dashboard_queries(path: Path) -> list[DashboardQuery]:
    """Every panel target's expr, and each query variable's series as PromQL.

    `label_values(selector, label)` is Grafana's, not PromQL: it becomes `count by (label)
    (selector)`, which has data exactly when the variable has values.
    """
    dashboard = json.loads(path.read_text())
    queries = [
        DashboardQuery(f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.fullmatch(text.strip())
        if not match or not match.group(1):
            raise ValueError(f"variable {variable['name']}: not label_values(selector, label)")
        expr = f"count by ({match.group(2)}) ({match.group(1)})"
        queries.append(DashboardQuery(f"variable ${variable['name']}", expr))
    return queries


def substitute(expr: str, variables: dict[str, str]) -> str:
    """`expr` with each `$name` / `${name}` replaced; KeyError names an undefined one."""
    return re.sub(r"\$\{?(\w+)\}?", lambda match: variables[match.group(1)], expr)
