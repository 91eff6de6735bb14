"""The compact text report: one table per workload, then what async-inspect said, then failures."""

from __future__ import annotations

from collections.abc import Sequence

from .summary import ModeSummary, Spread
from .workloads import Metric

__all__ = ["grid", "render"]


def _ratio(value: Spread | None) -> str:
    if value is None:
        return "-"
    if value.n == 1 or value.min == value.max:
        return f"{value.median:.3f}"
    return f"{value.median:.3f} [{value.min:.3f}-{value.max:.3f}]"


def _number(value: Spread | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value.median:,.{digits}f}"


def _count_range(value: Spread | None) -> str:
    if value is None:
        return "-"
    if value.min == value.max:
        return f"{value.median:,.0f}"
    return f"{value.median:,.0f} [{value.min:,.0f}-{value.max:,.0f}]"


def _percent(value: Spread | None) -> str:
    return "-" if value is None else f"{100 * value.median:.0f}%"


def _cpu(summary: ModeSummary) -> str:
    if summary.collector_cpu_s is None:
        return "-"
    share = summary.collector_cpu_share
    suffix = f" ({100 * share.median:.0f}%)" if share is not None else ""
    return f"{summary.collector_cpu_s.median:.2f}s{suffix}"


def grid(header: list[str], rows: list[list[str]]) -> list[str]:
    """A text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]


def _main_table(summaries: Sequence[ModeSummary], metrics: Sequence[Metric]) -> list[str]:
    header = ["mode"]
    for metric in metrics:
        header.append(f"{metric.unit} ratio med [min-max]")
        if metric.per_cpu_of is None:  # a derived metric shows its ratio only
            header.append(f"{metric.unit} med")
    header += ["spans recv/run", "CLI CPU (core%)", "target CPU", "load core"]
    rows = []
    for summary in summaries:
        row = [summary.mode]
        for metric in metrics:
            row.append(_ratio(summary.ratios[metric.key]))
            if metric.per_cpu_of is None:
                digits = 2 if metric.key.endswith("_ms") else 0
                row.append(_number(summary.absolute[metric.key], digits))
        row += [
            _count_range(summary.spans_received),
            _cpu(summary),
            _percent(summary.target_share),
            _percent(summary.load_core_busy),
        ]
        rows.append(row)
    return grid(header, rows)


def _drops(summary: ModeSummary) -> str:
    parts = [
        f"{reason} {_number(value)}"
        for reason, value in summary.agent_dropped.items()
        if value is not None and value.median
    ]
    return ", ".join(parts) or "0"


def _log_table(summaries: Sequence[ModeSummary]) -> list[str]:
    under_cli = [s for s in summaries if s.spans_handed is not None]
    if not under_cli:
        return []
    header = ["mode", "agent dropped/run", "CLI handed on/run", "lost in CLI/run",
              "CLI says lost/run", "export reqs/run", "export MB/run", "receiver CPU"]  # fmt: skip
    rows = [
        [
            s.mode,
            _drops(s),
            _number(s.spans_handed),
            _number(s.lost_in_cli),
            _number(s.lost_reported),
            _number(s.export_requests),
            _number(s.export_mbytes, 1),
            _percent(s.receiver_cpu_share),
        ]
        for s in under_cli
    ]
    return ["", "what async-inspect reported on stderr (medians per run):", *grid(header, rows)]


def _notes(summaries: Sequence[ModeSummary]) -> list[str]:
    lines: list[str] = []
    for s in summaries:
        for failure in s.failures:
            lines.append(f"!! FAILED {s.workload} {s.mode} {failure}")
        for warning in s.warnings:
            lines.append(f"!  {s.workload} {s.mode} {warning}")
        if s.queue_full_runs:
            lines.append(
                f"   {s.workload} {s.mode}: the CLI warned that its export queue was full "
                f"in {s.queue_full_runs} of {s.rounds} runs"
            )
        if s.http_errors is not None and s.http_errors.max:
            lines.append(f"!  {s.workload} {s.mode}: wrk saw errors (max {s.http_errors.max:,.0f})")
        if s.facts:
            facts = ", ".join(f"{name} {_count_range(value)}" for name, value in s.facts.items())
            lines.append(f"   {s.workload} {s.mode}: {facts}")
        for line in s.unexpected:
            lines.append(f"   {s.workload} {s.mode} stderr: {line[:160]}")
    return lines


def render(
    title: str, rounds: int, summaries: Sequence[ModeSummary], metrics: Sequence[Metric]
) -> str:
    """The report for one workload."""
    lines = [f"{title}  ({rounds} rounds)", *_main_table(summaries, metrics)]
    lines += _log_table(summaries)
    notes = _notes(summaries)
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)
