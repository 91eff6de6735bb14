"""async-inspect's alerts: PromQL over the metric catalog, with every number from a Knobs.

Span alerts aggregate per service and span name across processes and hosts (what a user of the
service sees); asyncio and health alerts keep every label but the one they sum over, so two
hosts with the same pid never merge. The span metrics come in two namings
(`--metrics-naming otel|tempo`), so the span alerts take a Naming; the others do not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["NAMINGS", "Alert", "Group", "Knobs", "Naming", "ThresholdError", "groups"]

DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")


class ThresholdError(ValueError):
    """A knob is missing, unknown, or has a value of the wrong kind."""


class Knobs:
    """One section of thresholds.yaml; remembers which keys an alert read."""

    def __init__(self, section: str, values: dict[str, str | float]) -> None:
        self.section = section
        self.values = values
        self.used: set[str] = set()

    def _get(self, key: str) -> str | float:
        if key not in self.values:
            raise ThresholdError(f"{self.section}.{key} is missing")
        self.used.add(key)
        return self.values[key]

    def number(self, key: str) -> float:
        value = self._get(key)
        if isinstance(value, str):
            raise ThresholdError(f"{self.section}.{key} must be a number, not {value!r}")
        return value

    def duration(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not DURATION.fullmatch(value):
            raise ThresholdError(f"{self.section}.{key} must be a duration like 5m, not {value!r}")
        return value

    def word(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise ThresholdError(f"{self.section}.{key} must be a word, not {value!r}")
        return value

    def unused(self) -> list[str]:
        return [f"{self.section}.{key}" for key in self.values if key not in self.used]


@dataclass(frozen=True)
class Naming:
    """How the span metrics are named: the metric names, the service label, the unit."""

    calls: str
    buckets: str
    service: str
    to_seconds: str  # PromQL suffix turning a histogram quantile into seconds
    description: str


NAMINGS = {
    "otel": Naming(
        calls="traces_span_metrics_calls_total",
        buckets="traces_span_metrics_duration_milliseconds_bucket",
        service="service_name",
        to_seconds=" / 1000",
        description="traces_span_metrics_* (--metrics-naming otel, the default: the "
        "OpenTelemetry Collector spanmetrics connector's)",
    ),
    "tempo": Naming(
        calls="traces_spanmetrics_calls_total",
        buckets="traces_spanmetrics_latency_bucket",
        service="service",
        to_seconds="",
        description="traces_spanmetrics_* (--metrics-naming tempo: the Tempo metrics-generator's)",
    ),
}


@dataclass(frozen=True)
class Alert:
    """One alerting rule, ready to write."""

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str


@dataclass(frozen=True)
class Group:
    name: str
    alerts: list[Alert]


def _number(value: float) -> str:
    return f"{value:g}"


def _percent(ratio: float) -> str:
    return f"{ratio * 100:g}%"


def _alert(name: str, knobs: Knobs, expr: str, summary: str, description: str) -> Alert:
    return Alert(
        name=name,
        expr=expr.strip(),
        for_=knobs.duration("for"),
        severity=knobs.word("severity"),
        summary=summary,
        description=description,
    )


def span_latency(k: Knobs, n: Naming) -> Alert:
    window, seconds = k.duration("window"), k.number("seconds")
    quantile, min_rate = k.number("quantile"), k.number("min_calls_per_second")
    by = f"{n.service}, span_name"
    expr = f"""
(
  histogram_quantile({_number(quantile)},
    sum by ({by}, le) (rate({n.buckets}[{window}]))
  ){n.to_seconds}
  > {_number(seconds)}
)
and on ({by})
sum by ({by}) (rate({n.calls}[{window}])) > {_number(min_rate)}
"""
    where = f"{{{{ $labels.span_name }}}} in {{{{ $labels.{n.service} }}}}"
    return _alert(
        "AsyncInspectSpanLatencyHigh",
        k,
        expr,
        f"Slow spans: p{_number(quantile * 100)} of {where} is {{{{ $value | humanizeDuration }}}}",
        f"The p{_number(quantile * 100)} duration of span {{{{ $labels.span_name }}}} "
        f"(service {{{{ $labels.{n.service} }}}}) over the last {window} is "
        f"{{{{ $value | humanizeDuration }}}}, above {_number(seconds)}s, for {k.duration('for')}. "
        "A span named __overflow__ stands for the span names beyond the per-service cap.",
    )


def error_ratio(k: Knobs, n: Naming) -> Alert:
    window, ratio = k.duration("window"), k.number("ratio")
    min_rate = k.number("min_calls_per_second")
    by = f"{n.service}, span_name"
    expr = f"""
(
  sum by ({by}) (rate({n.calls}{{status_code="STATUS_CODE_ERROR"}}[{window}]))
  /
  sum by ({by}) (rate({n.calls}[{window}]))
  > {_number(ratio)}
)
and on ({by})
sum by ({by}) (rate({n.calls}[{window}])) > {_number(min_rate)}
"""
    return _alert(
        "AsyncInspectSpanErrorRatioHigh",
        k,
        expr,
        f"{{{{ $value | humanizePercentage }}}} of {{{{ $labels.span_name }}}} spans "
        f"in {{{{ $labels.{n.service} }}}} fail",
        f"{{{{ $value | humanizePercentage }}}} of the spans named {{{{ $labels.span_name }}}} "
        f"(service {{{{ $labels.{n.service} }}}}) ended in an exception over the last {window}, "
        f"above {_percent(ratio)}, for {k.duration('for')}. Cancelled tasks do not count as "
        "errors. The exception type and stack trace are on the failed spans in your traces.",
    )


def loop_blocked(k: Knobs) -> Alert:
    window, seconds = k.duration("window"), k.number("seconds")
    expr = f"max_over_time(async_inspect_longest_step_seconds[{window}]) > {_number(seconds)}"
    where = "{{ $labels.service_name }} pid {{ $labels.pid }}"
    return _alert(
        "AsyncInspectEventLoopBlocked",
        k,
        expr,
        f"Event loop of {where} blocked for {{{{ $value | humanizeDuration }}}}",
        f"In {where} (on {{{{ $labels.instance }}}}), one coroutine step ran for "
        f"{{{{ $value | humanizeDuration }}}} without yielding to the event loop, above "
        f"{_number(seconds)}s, in each {window} window for {k.duration('for')}: every other "
        "task of that process waited meanwhile. Look for blocking calls (synchronous I/O, "
        "CPU-heavy work, time.sleep) in the process's slowest spans.",
    )


def task_leak(k: Knobs) -> Alert:
    window, min_tasks = k.duration("window"), k.number("min_tasks")
    growth = k.number("growth_per_hour")
    expr = f"""
sum without (state) (async_inspect_tasks_live) > {_number(min_tasks)}
and
sum without (state) (deriv(async_inspect_tasks_live[{window}])) * 3600 > {_number(growth)}
"""
    where = "{{ $labels.service_name }} pid {{ $labels.pid }}"
    return _alert(
        "AsyncInspectTaskLeak",
        k,
        expr,
        f'{where} has {{{{ $value | printf "%.0f" }}}} live asyncio tasks, and growing',
        f'{where} (on {{{{ $labels.instance }}}}) has {{{{ $value | printf "%.0f" }}}} live '
        f"asyncio tasks (above {_number(min_tasks)}), and the count grew by more than "
        f"{_number(growth)} an hour over the last {window}, for {k.duration('for')}: tasks are "
        "created faster than they finish. Look for tasks that are never awaited or cancelled, "
        "or that wait forever.",
    )


def agent_drops(k: Knobs) -> Alert:
    window, ratio = k.duration("window"), k.number("ratio")
    expr = f"""
rate(async_inspect_records_dropped_total[{window}])
/ ignoring (reason) group_left ()
sum without (reason) (
  rate({{__name__=~"async_inspect_records_(received|dropped)_total"}}[{window}])
)
> {_number(ratio)}
"""
    where = "{{ $labels.service_name }} pid {{ $labels.pid }}"
    return _alert(
        "AsyncInspectAgentDroppingRecords",
        k,
        expr,
        f"async-inspect drops {{{{ $value | humanizePercentage }}}} of the records of {where}",
        f"The async-inspect agent in {where} (on {{{{ $labels.instance }}}}) dropped "
        f"{{{{ $value | humanizePercentage }}}} of its records over the last {window} (reason "
        f"{{{{ $labels.reason }}}}), above {_percent(ratio)}, for {k.duration('for')}. Spans of "
        "that process are missing from traces and span metrics undercount.",
    )


def process_lost(k: Knobs) -> Alert:
    window = k.duration("window")
    expr = f"increase(async_inspect_processes_lost_total[{window}]) > 0"
    return _alert(
        "AsyncInspectProcessLost",
        k,
        expr,
        '{{ $value | printf "%.0f" }} process(es) traced by async-inspect on '
        "{{ $labels.instance }} went away without detaching",
        f'{{{{ $value | printf "%.0f" }}}} process(es) that async-inspect on '
        f"{{{{ $labels.instance }}}} was attached to ended in the last {window} without "
        "saying goodbye: killed, crashed, or out of memory. Their last spans are missing. "
        "async_inspect_process_up shows which processes are still connected.",
    )


def export_failures(k: Knobs) -> Alert:
    window = k.duration("window")
    expr = f"rate(async_inspect_export_failures_total[{window}]) > 0"
    return _alert(
        "AsyncInspectExportFailing",
        k,
        expr,
        "async-inspect on {{ $labels.instance }} fails to export to {{ $labels.exporter }}",
        "async-inspect on {{ $labels.instance }} has failed exports to "
        f'{{{{ $labels.exporter }}}} ({{{{ $value | printf "%.3g" }}}}/s over {window}) for '
        f"{k.duration('for')}: the spans of failed exports may be lost. Check that the endpoint "
        "is reachable and accepts them.",
    )


def groups(thresholds: dict[str, Knobs], naming: Naming) -> list[Group]:
    """Every alert, in three groups, filled from `thresholds` (one Knobs per section)."""

    def knobs(section: str) -> Knobs:
        if section not in thresholds:
            raise ThresholdError(f"section {section} is missing")
        return thresholds[section]

    return [
        Group(
            "async-inspect-spans",
            [
                span_latency(knobs("span_latency"), naming),
                error_ratio(knobs("error_ratio"), naming),
            ],
        ),
        Group(
            "async-inspect-asyncio",
            [loop_blocked(knobs("loop_blocked")), task_leak(knobs("task_leak"))],
        ),
        Group(
            "async-inspect-health",
            [
                agent_drops(knobs("agent_drops")),
                process_lost(knobs("process_lost")),
                export_failures(knobs("export_failures")),
            ],
        ),
    ]
