"""deploy/prometheus and deploy/grafana, offline: the rule files are rendered from
thresholds.yaml, promtool accepts them and proves each alert fires on unhealthy series only,
the scrape config loads, and every dashboard query is valid PromQL."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.prometheus_server import PROMTOOL, dashboard_queries, substitute

DEPLOY = ROOT / "deploy" / "prometheus"
RENDER_RULES = DEPLOY / "render_rules.py"
RULE_FILES = [DEPLOY / "alerts.yml", DEPLOY / "alerts-tempo.yml"]
RULE_TESTS = sorted((DEPLOY / "tests").glob("*.yml"))
DASHBOARD = ROOT / "deploy" / "grafana" / "async-inspect.json"
GRAFANA = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"} | {
    name: ".*" for name in ("service", "pid", "span_name")
}

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="no promtool binary (apt-get install prometheus)"
)


def render(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RENDER_RULES), *args], capture_output=True, text=True, timeout=30
    )


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60)


def alert_exprs(rule_file: Path) -> dict[str, str]:
    """Alert name -> expr block, from a rule file as render_rules.py writes it."""
    pattern = r"^      - alert: (\w+)\n        expr: \|-\n((?:          .*\n)+)"
    return dict(re.findall(pattern, rule_file.read_text(), re.MULTILINE))


def alerts_tested_against(rule_file: Path) -> set[str]:
    """Alert names that the promtool tests loading `rule_file` evaluate."""
    texts = [path.read_text() for path in RULE_TESTS]
    loading = [text for text in texts if f"- ../{rule_file.name}\n" in text]
    return {name for text in loading for name in re.findall(r"alertname: (\w+)", text)}


def test_committed_rule_files_are_rendered_from_thresholds() -> None:
    # GIVEN thresholds.yaml and the committed alerts.yml / alerts-tempo.yml
    # WHEN the renderer checks them
    result = render("--check")
    # THEN they are what thresholds.yaml renders to
    assert result.returncode == 0, result.stderr


def test_a_threshold_edit_without_rendering_is_caught(tmp_path: Path) -> None:
    # GIVEN thresholds.yaml edited, the rule files not rendered again
    thresholds = tmp_path / "thresholds.yaml"
    text = (DEPLOY / "thresholds.yaml").read_text()
    thresholds.write_text(text.replace("  ratio: 0.05", "  ratio: 0.1"))
    # WHEN checked, THEN both stale files are named, and how to fix it
    result = render("--thresholds", str(thresholds), "--check")
    assert result.returncode == 1
    assert "alerts.yml, alerts-tempo.yml out of date: run python deploy/" in result.stderr


def test_an_override_changes_only_its_own_knob(tmp_path: Path) -> None:
    # GIVEN the error-ratio alert's `for` overridden on the command line
    output = tmp_path / "alerts.yml"
    result = render("--set", "error_ratio.for=15s", "-o", str(output))
    assert result.returncode == 0, result.stderr
    # THEN only that alert's `for:` and the description quoting it differ
    before = (DEPLOY / "alerts.yml").read_text().splitlines()
    after = output.read_text().splitlines()
    changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert changed[0] == ("        for: 5m", "        for: 15s")
    assert len(changed) == 2 and "for 15s." in changed[1][1]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("error_ratio.nope=1", "there is no knob error_ratio.nope"),
        ("error_ratio.for=soon", "error_ratio.for must be a duration"),
        ("error_ratio.ratio=high", "error_ratio.ratio must be a number"),
        ("error_ratio", "expected SECTION.KEY=VALUE"),
    ],
)
def test_a_bad_override_is_one_line_naming_the_knob(override: str, message: str) -> None:
    result = render("--set", override, "-o", "-")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("render_rules: ") and message in result.stderr


def test_overrides_never_touch_the_committed_files() -> None:
    result = render("--set", "error_ratio.for=15s")
    assert result.returncode == 2
    assert "--set needs -o" in result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("error_ratio:\n  ratio: [0.05]\n", "thresholds.yaml:2: not `section:` or `  key: value`"),
        ("  ratio: 0.05\n", "thresholds.yaml:1: not `section:` or `  key: value`"),
        ("span_latency:\n  window: 5m\n", "span_latency.seconds is missing"),
    ],
)
def test_thresholds_outside_the_plain_subset_are_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    # GIVEN a thresholds file that is not a plain two-level mapping, or lacks a knob
    thresholds = tmp_path / "thresholds.yaml"
    thresholds.write_text(text)
    # WHEN rendered, THEN it says where and what, and writes nothing
    result = render("--thresholds", str(thresholds), "-o", "-")
    assert result.returncode == 1
    assert message in result.stderr and result.stdout == ""


def test_an_unknown_knob_in_the_file_is_refused(tmp_path: Path) -> None:
    thresholds = tmp_path / "thresholds.yaml"
    text = (DEPLOY / "thresholds.yaml").read_text()
    thresholds.write_text(text.replace("  ratio: 0.05", "  ratio: 0.05\n  ration: 0.5"))
    result = render("--thresholds", str(thresholds), "-o", "-")
    assert result.returncode == 1
    assert "unknown knobs: error_ratio.ration" in result.stderr


@needs_promtool
def test_promtool_accepts_the_rule_files() -> None:
    result = promtool("check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
@pytest.mark.parametrize("rule_test", RULE_TESTS, ids=lambda path: path.name)
def test_promtool_rule_tests_pass(rule_test: Path) -> None:
    # GIVEN synthetic series of healthy and unhealthy services, processes and exporters
    # WHEN promtool evaluates the rules over them
    result = promtool("test", "rules", rule_test)
    # THEN each alert fires for the unhealthy ones only, with the expected annotations
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_promtool_test() -> None:
    # GIVEN the alerts of alerts.yml, and those whose expression differs in alerts-tempo.yml
    default, tempo = (alert_exprs(path) for path in RULE_FILES)
    differing = {name for name, expr in tempo.items() if default.get(name) != expr}
    # THEN each is named by a promtool test of its rule file
    assert set(default) <= alerts_tested_against(RULE_FILES[0])
    assert differing and differing <= alerts_tested_against(RULE_FILES[1])


@needs_promtool
def test_promtool_accepts_the_scrape_config() -> None:
    result = promtool("check", "config", DEPLOY / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # GIVEN every panel and variable query of the dashboard, variables filled as Grafana would
    queries = dashboard_queries(DASHBOARD)
    rules = [
        {"record": f"dashboard:query_{n}", "expr": substitute(query.expr, GRAFANA)}
        for n, query in enumerate(queries)
    ]
    # WHEN promtool parses them as recording rules (JSON is YAML)
    rule_file = tmp_path / "dashboard.yml"
    rule_file.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", rule_file)
    # THEN all parse
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(queries) >= 25


def test_dashboard_queries_use_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert {"service", "pid", "span_name"} <= variables.keys()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
