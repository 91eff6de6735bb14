#!/usr/bin/env python3
"""Render the chart's examples: one per ci/*-values.yaml, into examples/<name>/rendered.yaml.

    python helm/render_examples.py            # after changing the chart or a ci/ values file
    python helm/render_examples.py --check    # what CI runs: exit 1, naming them, if any is stale

Rendering is `helm template async-inspect helm/async-inspect -n observability -f ci/<x>.yaml`
done by Helm's own code (the helm-python-sdk package embeds it; no helm binary): the values
are checked against values.schema.json, NOTES.txt and empty templates are left out, and the
objects come in Helm's install order. The script also keeps files/alerts.yml equal to
deploy/prometheus/alerts.yml, since a chart can read only the files inside it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import helm_python
import yaml

HELM = Path(__file__).resolve().parent
CHART = HELM / "async-inspect"
ALERTS_SOURCE = HELM.parent / "deploy" / "prometheus" / "alerts.yml"
ALERTS_COPY = CHART / "files" / "alerts.yml"
RELEASE = "async-inspect"
NAMESPACE = "observability"
# Helm's install order (pkg/release/util/kind_sorter.go) for the kinds this chart has; other
# kinds (the Prometheus Operator's) come last, by name, as Helm does with unknown kinds.
KIND_ORDER = ["ServiceAccount", "ConfigMap", "ClusterRole", "ClusterRoleBinding", "Service",
              "DaemonSet"]  # fmt: skip


def values_files() -> list[Path]:
    """The chart's ci/*-values.yaml files, sorted: one example each."""
    return sorted((CHART / "ci").glob("*-values.yaml"))


def example_path(values_file: Path) -> Path:
    """examples/<name>/rendered.yaml for ci/<name>-values.yaml."""
    name = values_file.name.removesuffix("-values.yaml")
    return CHART / "examples" / name / "rendered.yaml"


def load_values(values_file: Path) -> dict[str, Any]:
    """A values file as Helm reads it (an empty file is no values)."""
    values = yaml.safe_load(values_file.read_text()) or {}
    if not isinstance(values, dict):
        raise SystemExit(f"{values_file}: not a mapping of values")
    return values


def render_documents(values: dict[str, Any]) -> list[tuple[str, str]]:
    """(template path, manifest) for every object the values render to, in install order.

    Raises helm_python.HelmError when the values break the schema or a template fails.
    """
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    documents = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        for document in re.split(r"^---\s*$", text, flags=re.MULTILINE):
            if yaml.safe_load(document):
                documents.append((path, document.strip("\n")))

    def order(item: tuple[str, str]) -> tuple[int, str, str]:
        kind = yaml.safe_load(item[1])["kind"]
        rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
        return rank, kind, item[0]

    return sorted(documents, key=order)


def render_example(values_file: Path) -> str:
    """The text of examples/<name>/rendered.yaml for `values_file`."""
    relative = values_file.relative_to(CHART)
    parts = [
        f"# Rendered by helm/render_examples.py from {relative} (release {RELEASE}, "
        f"namespace {NAMESPACE}): do not edit."
    ]
    for path, manifest in render_documents(load_values(values_file)):
        parts.append(f"---\n# Source: {path}\n{manifest}")
    return "\n".join(parts) + "\n"


def expected_files() -> dict[Path, str]:
    """Every generated file and the text it must have."""
    expected = {ALERTS_COPY: ALERTS_SOURCE.read_text()}
    for values_file in values_files():
        expected[example_path(values_file)] = render_example(values_file)
    return expected


def stale_files() -> list[Path]:
    """Generated files that are missing or differ from a fresh render."""
    return [
        path
        for path, text in expected_files().items()
        if not path.is_file() or path.read_text() != text
    ]


def main(argv: list[str] | None = None) -> int:
    """Write the generated files, or with --check only report the stale ones (exit 1)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for path in stale:
            print(f"stale: {path.relative_to(HELM.parent)}", file=sys.stderr)
        if stale:
            print("run: python helm/render_examples.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in expected_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(HELM.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
