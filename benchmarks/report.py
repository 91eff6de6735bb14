"""The README's "Overhead, measured" section, rendered from the benchmarks' JSON files.

    .venv/bin/python -m benchmarks.report overhead.json attach_latency.json memory.json \\
        scrape.json daemon_scaling.json > section.md

Each file is what one benchmark wrote with `--json` (any subset, in any order; the kind is
read from its contents). Every table says which command produced it, so refreshing the
section is: re-run those commands, then this.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from .modes import MODES

SPEC = {  # the spec's overhead table: configuration -> claimed overhead
    "run-noexport": "0%",
    "run-full": "2-5%",
    "run-10pct": "0.5-1%",
    "run-1pct": "<0.1%",
    "run-burst-10pct": "0.5-1%",
    "run-burst-1pct": "<0.1%",
}
LABELS = {
    "run-paused": "attached, every event off (`--burst` with a ratio of 0.0001)",
    "run-noexport": "No export (`run --no-tree`)",
    "run-full": "Export, no sampling (`run --endpoint`)",
    "run-10pct": "Export, 10% sampling",
    "run-1pct": "Export, 1% sampling",
    "run-burst-10pct": "Export, 10% of the time: 0.5 s bursts (`--burst 0.5`)",
    "run-burst-1pct": "Export, 1% of the time: 50 ms bursts (`--burst 0.05`)",
    "attached": "`attach PID`, export, no sampling",
    "after-detach": "after `detach PID` / Ctrl-C",
    "peer-otel": "peer: OpenTelemetry's aiohttp instrumentation, SDK export",
    "busy-neighbour": "no agent; a busy loop takes 20% of the CLI's CPU",
    "noop-tracer": "no agent: a Python tracer on the agent's events, callbacks that do nothing",
    "noop-tracer-steps": "the same on a design following task steps (start/return + Handle._run)",
    "floor": "the floor: `run --endpoint` with callbacks that return at once (AI_BENCH_FLOOR)",
    "records": "the records ceiling: each event only appended to a ring (AI_BENCH_RECORDS)",
    "baseline": "noise floor: plain python, round vs median",
}
GOALS = {  # issue 6, per mode and workload
    ("run-full", "W1"): ">= 0.50 (at most 2x slower)",
    ("run-full", "W2"): ">= 0.95",
    ("run-full", "W3"): ">= 0.98",
    ("run-10pct", "W2"): ">= 0.98",
    ("run-1pct", "W2"): ">= 0.99",
    ("run-burst-10pct", "W2"): ">= 0.98",
    ("run-burst-1pct", "W2"): ">= 0.99",
    ("after-detach", "W1"): "1.00",
    ("after-detach", "W2"): "1.00",
    ("after-detach", "W3"): "1.00",
}
PER_CPU = {"W1": "chains_per_cpu_s", "W2": "requests_per_cpu_s", "W3": "requests_per_cpu_s"}
PLAIN = {"W1": "chains_per_s", "W2": "requests_per_s", "W3": "requests_per_s"}
TITLES = {"W1": "W1 worst case", "W2": "W2 aiohttp hello", "W3": "W3 typical service"}


def kind_of(document: dict[str, Any]) -> str:
    kinds = {"samples": "overhead", "rows": "attach_latency", "per_task": "memory",
             "sizes": "scrape", "counts": "daemon_scaling"}  # fmt: skip
    for key, kind in kinds.items():
        if key in document:
            return kind
    raise SystemExit("not a benchmark JSON file (no samples/rows/per_task/sizes/counts)")


def command(kind: str, config: dict[str, Any]) -> str:
    """The recorded command, else one rebuilt from the flags that differ from the defaults."""
    if config.get("command"):
        return str(config["command"])
    defaults = vars(importlib.import_module(f"benchmarks.{kind}").parse_args([]))
    flags = []
    for key, value in config.items():
        if key in ("json", "logs") or key not in defaults or defaults[key] == value:
            continue
        flag = "--" + key.replace("_", "-")
        flags.append(flag if value is True else f"{flag} {value}")
    return " ".join([f".venv/bin/python -m benchmarks.{kind}", *flags])


def config_of(document: dict[str, Any]) -> dict[str, Any]:
    """The configuration a benchmark recorded with its results."""
    config: dict[str, Any] = document.get("config", {})
    return config


def _ratio(spread: dict[str, float] | None) -> str:
    if not spread:
        return "-"
    if spread["min"] == spread["max"]:
        return f"{spread['median']:.2f}"
    return f"{spread['median']:.2f} [{spread['min']:.2f}-{spread['max']:.2f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _applies(mode: str, workload: str) -> bool:
    """Whether `mode` is measured on `workload` now (a file may hold rows since ruled out)."""
    known = MODES.get(mode)
    return known is None or known.applies_to(workload)


def overhead(document: dict[str, Any]) -> list[str]:
    summary: dict[str, list[dict[str, Any]]] = document["summary"]
    workloads = [w for w in ("W1", "W2", "W3") if w in summary]
    by_mode = {(row["mode"], w): row for w in workloads for row in summary[w]}
    modes = [m for m in LABELS if any((m, w) in by_mode for w in workloads)]
    modes = [m for m in modes if m != "baseline"] + (["baseline"] if "baseline" in modes else [])
    config = config_of(document)
    labels = dict(LABELS)
    if not config.get("one_at_a_time", True):  # files from before side by side: one at a time
        labels["baseline"] = "noise floor: plain python beside plain python"

    def cells(metric: dict[str, str]) -> list[list[str]]:
        rows = []
        for mode in modes:
            row = [labels[mode], SPEC.get(mode, "-")]
            for w in workloads:
                entry = by_mode.get((mode, w)) if _applies(mode, w) else None
                row.append(_ratio(entry["ratios"].get(metric[w])) if entry else "n/a")
            goals = [f"{w} {GOALS[(mode, w)]}" for w in workloads if (mode, w) in GOALS]
            row.append(", ".join(goals) or "-")
            rows.append(row)
        return rows

    header = ["configuration", "spec: overhead", *(TITLES[w] for w in workloads), "issue 6 goal"]
    rounds = max((row["rounds"] for rows in summary.values() for row in rows), default=0)
    how = (
        f"{rounds} interleaved rounds"
        if config.get("one_at_a_time", True)
        else f"{rounds} rounds, each configuration side by side with plain python on the "
        "same CPU, both loaded at once"
    )
    lines = [
        "### Throughput",
        "",
        f"Ratio to plain python measured in the same run (1.00: no cost), median [min-max] over "
        f"{how}, per CPU-second the target got (the machine is shared; "
        "see benchmarks/README.md). The spec's percentages are overheads: 5% overhead is a "
        "ratio of 0.95.",
        "",
        *_table(header, cells(PER_CPU)),
        "",
        "The same runs, plain throughput ratio (what a saturated service loses when its CPU "
        "is not stolen by others):",
        "",
        *_table(header, cells(PLAIN)),
        "",
        f"Command: `{command('overhead', config)}` (async-inspect {config.get('async_inspect')}, "
        f"targets run by {config.get('python', '?')}).",
    ]
    return lines


def attach_latency(document: dict[str, Any]) -> list[str]:
    rows = []
    for row in document["rows"]:
        rows.append([
            row["python"], row["kind"], f"{row['ok']}/{row['runs']}",
            "-" if row["p50"] is None else f"{row['p50']:.2f}",
            "-" if row["worst"] is None else f"{row['worst']:.2f}",
            "-" if row["injection_p50"] is None else f"{row['injection_p50']:.2f}",
            "; ".join(row["methods"]),
        ])  # fmt: skip
    startup = sorted(document["cli_startup_s"])
    p50 = startup[len(startup) // 2] if startup else float("nan")
    header = ["Python", "target", "ok", "p50 s", "worst s", "p50 less CLI start-up s", "how"]
    return [
        "### Attach latency",
        "",
        "From `async-inspect attach PID` starting to its `attached` line (issue 6: p50 <= 1 s, "
        "worst <= 2 s). The CLI's own start-up (`async-inspect attach --help`: imports) is "
        f"p50 {p50:.2f} s of it.",
        "",
        *_table(header, rows),
        "",
        f"Command: `{command('attach_latency', document['config'])}`.",
    ]


def memory(document: dict[str, Any]) -> list[str]:
    lines = ["### Memory", ""]
    rows = [
        [row["mode"], row["measure"], _bytes(row["per_task_bytes"])]
        for row in document["per_task"]
        if row["mode"] != "baseline"
    ]
    if rows:
        tasks = document["config"].get("tasks", 10_000)
        lines += [f"Agent bytes per live task, {tasks:,} tasks blocked on an Event (issue 6: "
                  "<= 1 KB):", "", *_table(["mode", "measured by", "bytes per task"], rows),
                  ""]  # fmt: skip
    rss = document.get("daemon_rss")
    if rss:
        lines += [
            f"Node daemon RSS over {document['config'].get('minutes')} min, exporting "
            f"{rss['spans_per_s']:,.0f} spans/s from one app: first {rss['first_mb']:.1f} MB, "
            f"last {rss['last_mb']:.1f} MB, max {rss['max_mb']:.1f} MB, slope "
            f"{rss['slope_mb_per_min']:+.2f} MB/min; its CPU {rss['daemon_cpu_percent']:.0f}% "
            "of one core.",
            "",
        ]
    lines.append(f"Command: `{command('memory', document['config'])}`.")
    return lines


def _bytes(spread: dict[str, float] | None) -> str:
    if not spread:
        return "-"
    if spread["min"] == spread["max"]:
        return f"{spread['median']:,.0f}"
    return f"{spread['median']:,.0f} [{spread['min']:,.0f}-{spread['max']:,.0f}]"


def scrape(document: dict[str, Any]) -> list[str]:
    rows = [
        [f"{s['names']:,}", f"{s['series']:,}", f"{s['p50_ms']:.0f}", f"{s['p99_ms']:.0f}"]
        for s in document["sizes"]
        if s.get("times_ms")
    ]
    return [
        "### /metrics scrape time, under load",
        "",
        *_table(["span names", "series", "p50 ms", "p99 ms"], rows),
        "",
        f"Command: `{command('scrape', document['config'])}`.",
    ]


def daemon_scaling(document: dict[str, Any]) -> list[str]:
    def value(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    rows = [
        [str(c["apps"]), value(c["attached_after_s"], ".1f"), value(c["cpu_percent"], ".1f"),
         value(c["rss_mb"], ".0f"), value(c["spans_per_s"], ",.0f")]
        for c in document["counts"]
    ]  # fmt: skip
    config = document["config"]
    return [
        "### Node daemon",
        "",
        f"`async-inspect collector --interval 1`, apps handling {config.get('rate')} "
        "requests/s each (4 spans per request):",
        "",
        *_table(["apps", "all attached after s", "daemon CPU %", "RSS MB", "spans/s"], rows),
        "",
        f"Command: `{command('daemon_scaling', config)}`.",
    ]


RENDER = {"overhead": overhead, "attach_latency": attach_latency, "memory": memory,
          "scrape": scrape, "daemon_scaling": daemon_scaling}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    documents = {}
    for path in args.files:
        document = json.loads(path.read_text())
        documents[kind_of(document)] = document
    print("## Overhead, measured\n")
    print("Measured by the commands shown under each table (see benchmarks/README.md); "
          "to refresh, re-run them with `--json` and render this section with "
          "`.venv/bin/python -m benchmarks.report FILE...`.\n")  # fmt: skip
    for kind in RENDER:
        if kind in documents:
            print("\n".join(RENDER[kind](documents[kind])))
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
