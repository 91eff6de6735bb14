"""The Prometheus side of collector.metrics: metric families built at scrape time from a
MetricsStore by a custom collector over a registry of our own (never the global one).
Imported only where /metrics is served: prometheus-client is not the CLI's start-up time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from profiler import wire

from .metrics import MetricsStore

__all__ = ["NAMINGS", "Naming", "build_registry"]

# Drop reasons shown at 0 from the start (see the agent's tracker and sender).
_DROP_REASONS = ("buffer_full", "open_span_limit", "collector_unavailable")


@dataclass(frozen=True)
class Naming:
    """How span metrics are named: the OTel spanmetrics connector's, or Tempo's."""

    calls: str
    duration: str
    service_label: str
    unit_per_ms: float  # 1 for milliseconds, 0.001 for seconds
    bounds_ms: tuple[int, ...]


NAMINGS = {
    "otel": Naming(
        "traces_span_metrics_calls", "traces_span_metrics_duration_milliseconds",
        "service_name", 1.0, (2, 4, 6, 8, 10, 50, 100, 200, 400, 800, 1000, 1400, 2000, 5000,
                              10000, 15000),
    ),
    "tempo": Naming(
        "traces_spanmetrics_calls", "traces_spanmetrics_latency", "service", 0.001,
        tuple(2 * 2**k for k in range(14)),
    ),
}  # fmt: skip


class _Exposition(Collector):
    """Builds every family from the store at scrape time."""

    def __init__(self, store: MetricsStore, naming: Naming) -> None:
        self.store = store
        self.naming = naming

    def collect(self) -> Iterator[Any]:
        yield from self._span_metrics()
        yield from self._process_metrics()

    def _span_metrics(self) -> Iterator[Any]:
        naming = self.naming
        labels = [naming.service_label, "span_name", "span_kind", "status_code"]
        calls = CounterMetricFamily(naming.calls, "Spans observed (sampled or not)", labels=labels)
        duration = HistogramMetricFamily(naming.duration, "Span duration", labels=labels)
        fine = {bound: index for index, bound in enumerate(wire.SPAN_BOUNDS_MS)}
        histograms = self.store.span_histograms()
        for service, name, _ in list(histograms):
            # An error series from the first call on, so rate() sees the first error too.
            error_key = (service, name, "STATUS_CODE_ERROR")
            if error_key not in histograms:
                calls.add_metric([service, name, "SPAN_KIND_INTERNAL", error_key[2]], 0)
        for (service, name, status), histogram in sorted(histograms.items()):
            values = [service, name, "SPAN_KIND_INTERNAL", status]
            calls.add_metric(values, histogram.count)
            cumulative, buckets, position = 0, [], 0
            for bound in naming.bounds_ms:
                while position <= fine[bound]:
                    cumulative += histogram.buckets[position]
                    position += 1
                buckets.append((_le(bound * naming.unit_per_ms), cumulative))
            buckets.append(("+Inf", histogram.count))
            duration.add_metric(values, buckets, histogram.sum_ns / 1e6 * naming.unit_per_ms)
        yield calls
        yield duration

    def _process_metrics(self) -> Iterator[Any]:
        store = self.store
        ids = ["service_name", "pid"]
        live = GaugeMetricFamily("async_inspect_tasks_live", "Live tasks running application "
                                 "code", labels=[*ids, "state"])  # fmt: skip
        created = CounterMetricFamily("async_inspect_tasks_created", "Tasks started", labels=ids)
        finished = CounterMetricFamily(
            "async_inspect_tasks_finished", "Tasks ended, by outcome", labels=[*ids, "outcome"]
        )
        polls = CounterMetricFamily("async_inspect_polls", "Task steps", labels=ids)
        busy = CounterMetricFamily("async_inspect_busy_seconds", "Time tasks ran", labels=ids)
        longest = GaugeMetricFamily(
            "async_inspect_longest_step_seconds",
            "Longest single step in the last interval: the event loop was blocked that long",
            labels=ids,
        )
        up = GaugeMetricFamily("async_inspect_process_up", "1 while attached", labels=ids)
        received = CounterMetricFamily(
            "async_inspect_records_received", "Span records from the agent", labels=ids
        )
        dropped = CounterMetricFamily(
            "async_inspect_records_dropped", "Records the agent dropped", labels=[*ids, "reason"]
        )
        fill = GaugeMetricFamily(
            "async_inspect_agent_buffer_fill_ratio", "Agent buffer use, 0..1", labels=ids
        )
        recording = GaugeMetricFamily(
            "async_inspect_recording",
            "1 while the agent's events are on (between bursts 0: --burst)",
            labels=ids,
        )
        share = GaugeMetricFamily(
            "async_inspect_recorded_share",
            "Share of the time the agent records (1 unless --burst): divide call rates by it",
            labels=ids,
        )
        slow = CounterMetricFamily(
            "async_inspect_slow_steps",
            "Steps that blocked the event loop longer than le seconds",
            labels=[*ids, "le"],
        )
        attached = 0
        for process in store.live():
            session = process.session
            values = [session.service_name, str(session.pid)]
            runtime = process.runtime
            alive = process.ended_at is None
            attached += alive
            up.add_metric(values, 1.0 if alive else 0.0)
            running = int(runtime.get("tasks_running", 0))
            live.add_metric([*values, "running"], running)
            live.add_metric([*values, "blocked"], int(runtime.get("tasks_live", 0)) - running)
            created.add_metric(values, int(runtime.get("tasks_created", 0)))
            outcomes = runtime.get("tasks_finished") or {}
            for outcome in ("completed", "failed", "cancelled"):
                finished.add_metric([*values, outcome], int(outcomes.get(outcome, 0)))
            for threshold, count in (runtime.get("slow_steps") or {}).items():
                slow.add_metric([*values, str(threshold)], int(count))
            polls.add_metric(values, int(runtime.get("polls", 0)))
            busy.add_metric(values, int(runtime.get("busy_ns", 0)) / 1e9)
            longest.add_metric(values, int(runtime.get("longest_step_ns", 0)) / 1e9)
            received.add_metric(values, session.spans_received)
            for reason in sorted({*_DROP_REASONS, *process.dropped}):
                dropped.add_metric([*values, reason], process.dropped.get(reason, 0))
            fill.add_metric(values, process.buffer_fill)
            recording.add_metric(values, 1.0 if process.recording else 0.0)
            share.add_metric(values, process.recorded_share)
        yield from (live, created, finished, polls, busy, longest, slow, up, received, dropped,
                    fill, recording, share)  # fmt: skip
        yield GaugeMetricFamily(
            "async_inspect_processes_attached", "Processes observed now", value=attached
        )
        lost = CounterMetricFamily(
            "async_inspect_processes_lost",
            "Processes gone without goodbye (killed, crashed)",
            labels=["service_name"],
        )
        services = {p.session.service_name for p in store.live()} | set(store.processes_lost)
        for service in sorted(services):  # at 0 from the start, so increase() sees the first
            lost.add_metric([service], store.processes_lost.get(service, 0))
        yield lost
        yield CounterMetricFamily(
            "async_inspect_spans_exported",
            "Spans the OTLP endpoint accepted (without one: spans handed to the outputs)",
            value=store.spans_exported,
        )  # fmt: skip
        dropped_spans = CounterMetricFamily(
            "async_inspect_spans_dropped", "Spans that never reached the OTLP endpoint",
            labels=["reason"],
        )  # fmt: skip
        for reason, count in sorted(store.spans_dropped.items()):
            dropped_spans.add_metric([reason], count)
        yield dropped_spans
        failures = CounterMetricFamily(
            "async_inspect_export_failures", "Failed export calls", labels=["exporter"]
        )
        for exporter, count in sorted({**store.exporters, **store.export_failures}.items()):
            failures.add_metric([exporter], count)
        yield failures


def _le(bound: float) -> str:
    """A bucket bound as Prometheus clients write it: 2.0, 0.002, 16.384."""
    return repr(float(bound))


def build_registry(store: MetricsStore, naming: str = "otel") -> CollectorRegistry:
    """A fresh registry serving `store` with the given span-metrics naming."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Exposition(store, NAMINGS[naming]))
    return registry
