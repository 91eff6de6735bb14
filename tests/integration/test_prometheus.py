"""A real Prometheus scraping a real `async-inspect run --metrics-port`: the shipped alert rules
fire for a failing app (both span metric namings), and every query of the Grafana dashboard
returns data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLI, INTERPRETERS, ROOT, TARGETS
from tests.prometheus_server import (
    PROMETHEUS,
    DashboardQuery,
    PrometheusServer,
    dashboard_queries,
    free_port,
    scrape_config,
    substitute,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None, reason="no prometheus binary (apt-get install prometheus)"
    ),
]

RENDER_RULES = ROOT / "deploy" / "prometheus" / "render_rules.py"
DASHBOARD = ROOT / "deploy" / "grafana" / "async-inspect.json"
SERVICE = "failing-app"
FAILING_SPAN = "handle_request"  # a third of its calls raise
HEALTHY_SPAN = "lookup"
# The shipped rules look back minutes and wait minutes; the same rules, shortened for a test.
FAST_RULES = [
    "error_ratio.window=10s",
    "error_ratio.for=2s",
    "loop_blocked.window=5s",
    "loop_blocked.for=2s",
    "loop_blocked.seconds=0.1",  # the app's heartbeat blocks the loop for 150 ms
]
GRAFANA = {  # what Grafana substitutes, for a 1s scrape interval
    "service": SERVICE,
    "pid": ".*",
    "span_name": ".*",
    "__rate_interval": "10s",
    "__interval": "2s",
    "__range": "1m",
}
# Series that exist only once something goes wrong; their queries may rightly be empty here.
ONLY_ON_TROUBLE = ("async_inspect_records_dropped_total", "async_inspect_export_failures_total")


@dataclass
class Stack:
    """The app under `async-inspect run --metrics-port`, and a Prometheus scraping it."""

    app: subprocess.Popen[bytes]
    app_log: Path
    prometheus: PrometheusServer

    def app_output(self) -> str:
        return self.app_log.read_text(errors="replace")[-3000:]

    def scraped(self) -> bool:
        if self.app.poll() is not None:
            raise AssertionError(f"async-inspect run exited early:\n{self.app_output()}")
        return any(target["health"] == "up" for target in self.prometheus.targets())

    def alerts(self, name: str, **labels: str) -> list[dict[str, Any]]:
        """Active (pending or firing) alerts called `name` that carry `labels`."""
        return [
            alert
            for alert in self.prometheus.alerts()
            if alert["labels"]["alertname"] == name
            and all(alert["labels"].get(key) == value for key, value in labels.items())
        ]

    def wait_firing(self, name: str, **labels: str) -> dict[str, Any]:
        firing = self.prometheus.wait_for(
            f"{name} {labels} to fire",
            lambda: [a for a in self.alerts(name, **labels) if a["state"] == "firing"],
        )
        return firing[0]


def _stop_job(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C to the whole job as a terminal would; SIGKILL if it is still there after 30 s."""
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def running_stack(naming: str, workdir: Path) -> Iterator[Stack]:
    """failing_app.py under `run --metrics-naming NAMING`, scraped with FAST_RULES loaded."""
    rules = workdir / "alerts.yml"
    overrides = [arg for override in FAST_RULES for arg in ("--set", override)]
    render = [sys.executable, str(RENDER_RULES), "--naming", naming, *overrides, "-o", str(rules)]
    subprocess.run(render, check=True)
    port = free_port()
    app_log = workdir / "app.log"
    with app_log.open("wb") as log:
        app = subprocess.Popen(
            [
                *CLI,
                "run",
                "--metrics-port",
                str(port),
                "--metrics-naming",
                naming,
                "--service-name",
                SERVICE,
                "--",
                INTERPRETERS[min(INTERPRETERS)],
                str(TARGETS / "failing_app.py"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        config = scrape_config([f"127.0.0.1:{port}"], [rules], interval="1s")
        with PrometheusServer(config, workdir) as prometheus:
            stack = Stack(app, app_log, prometheus)
            prometheus.wait_for("Prometheus to scrape the CLI", stack.scraped, timeout=30)
            yield stack
    finally:
        _stop_job(app)
    assert app.poll() is not None, "async-inspect run outlived SIGKILL"


@pytest.fixture(scope="module")
def otel_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack("otel", tmp_path_factory.mktemp("otel")) as stack:
        yield stack


@pytest.fixture
def tempo_stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack("tempo", tmp_path) as stack:
        yield stack


def test_error_ratio_alert_fires_for_the_failing_span_name(otel_stack: Stack) -> None:
    # GIVEN an app where a third of the handle_request tasks raise, under `run --metrics-port`,
    #   and the error-ratio rule rendered with a 10s window and for: 2s
    # WHEN Prometheus scrapes and evaluates every second
    # THEN it fires for that service and span name only
    assert_error_ratio_alert(otel_stack, service_label="service_name")


def test_error_ratio_alert_fires_with_the_tempo_naming(tempo_stack: Stack) -> None:
    # GIVEN the same app under `run --metrics-naming tempo`, and alerts rendered for it
    # WHEN Prometheus scrapes and evaluates every second
    # THEN the same alert fires, on traces_spanmetrics_* and with the label `service`
    assert_error_ratio_alert(tempo_stack, service_label="service")


def assert_error_ratio_alert(stack: Stack, service_label: str) -> None:
    alert = stack.wait_firing("AsyncInspectSpanErrorRatioHigh", span_name=FAILING_SPAN)
    assert alert["labels"][service_label] == SERVICE
    assert alert["labels"]["severity"] == "critical"
    assert 0.2 < float(alert["value"]) < 0.5  # a third fail
    assert f"of {FAILING_SPAN} spans in {SERVICE} fail" in alert["annotations"]["summary"]
    assert stack.alerts("AsyncInspectSpanErrorRatioHigh", span_name=HEALTHY_SPAN) == []


def test_loop_blocked_alert_fires_and_names_the_process(otel_stack: Stack) -> None:
    # GIVEN the app's heartbeat blocking its loop for 150 ms every second, and the rule at 0.1s
    # WHEN Prometheus evaluates it
    alert = otel_stack.wait_firing("AsyncInspectEventLoopBlocked", service_name=SERVICE)
    # THEN it names the app's process
    pid = alert["labels"]["pid"]
    assert otel_stack.prometheus.query(f'async_inspect_process_up{{pid="{pid}"}} == 1')
    assert 0.1 < float(alert["value"]) < 1
    assert f"{SERVICE} pid {pid} blocked for" in alert["annotations"]["summary"]


@pytest.fixture(scope="module")
def stack_with_data(otel_stack: Stack) -> Stack:
    """The stack once a rate over Grafana's $__rate_interval sees failed spans."""
    errors = 'rate(traces_span_metrics_calls_total{status_code="STATUS_CODE_ERROR"}[10s]) > 0'
    otel_stack.prometheus.wait_for(
        "failed spans in a rate", lambda: otel_stack.prometheus.query(errors)
    )
    return otel_stack


@pytest.mark.parametrize(
    "query", dashboard_queries(DASHBOARD), ids=lambda query: query.where.replace(" ", "_")
)
def test_dashboard_query_returns_data(stack_with_data: Stack, query: DashboardQuery) -> None:
    # GIVEN the dashboard's query with its variables as Grafana fills them (service selected)
    expr = substitute(query.expr, GRAFANA)
    # WHEN Prometheus evaluates it (a parse error fails here, with Prometheus's message)
    result = stack_with_data.prometheus.query(expr)
    # THEN it has data, unless it only shows trouble that this app does not cause
    if not any(metric in expr for metric in ONLY_ON_TROUBLE):
        assert result, f"{query.where}: no data for\n{expr}"
