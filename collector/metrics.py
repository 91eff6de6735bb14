"""What Prometheus is served (collector.exposition): span RED metrics, asyncio task metrics,
and our own health, as the agents report them.

Agents send cumulative histograms per (function, outcome) in their STATS frames; this store
keeps the latest per live process and folds a finished process's totals into its service's
series, so counters never go backwards. Families are built at scrape time by a custom
collector over a registry of our own (never the global one).

Cardinality is bounded: span names per service are capped (see session.SpanNames), and a
process's own series (pid label) disappear `stale_after` seconds after it is gone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from profiler import wire

from .session import ProcessSession

__all__ = ["MetricsStore"]

_STATUS = {
    wire.STATE_COMPLETED: "STATUS_CODE_UNSET",
    wire.STATE_CANCELLED: "STATUS_CODE_UNSET",
    wire.STATE_FAILED: "STATUS_CODE_ERROR",
}


@dataclass
class _Histogram:
    count: int = 0
    sum_ns: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * wire.SPAN_BUCKETS)

    def add(self, count: int, sum_ns: int, buckets: list[int]) -> None:
        self.count += count
        self.sum_ns += sum_ns
        for index, value in enumerate(buckets):
            self.buckets[index] += value


@dataclass
class _Process:
    """What one process reported last."""

    session: ProcessSession
    spans: dict[tuple[int, int], tuple[int, int, list[int]]] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    buffer_fill: float = 0.0
    recording: bool = True  # the agent's events are on (off between bursts: --burst)
    recorded_share: float = 1.0  # share of the time it records
    ended_at: float | None = None


class MetricsStore:
    """Everything the /metrics endpoint shows, fed by the ingest side."""

    def __init__(self, stale_after: float = 60.0) -> None:
        self.stale_after = stale_after
        self._processes: dict[int, _Process] = {}  # by id(session)
        self._retired: dict[tuple[str, str, int], _Histogram] = {}
        self.processes_lost: dict[str, int] = {}  # by service
        self.spans_exported = 0
        self.spans_dropped: dict[str, int] = {}  # by reason, counted by the OTLP exporter
        self.export_failures: dict[str, int] = {}
        self.exporters: dict[str, int] = {}  # configured exporters, at 0 failures

    # -- ingest side --------------------------------------------------------------------

    def update(self, session: ProcessSession, stats: dict[str, Any]) -> None:
        """Take a STATS frame's numbers (malformed entries are skipped)."""
        process = self._processes.setdefault(id(session), _Process(session))
        metrics = stats.get("metrics") or {}
        for entry in metrics.get("spans", ()):
            try:
                code_id, state, count, sum_ns, *buckets = entry
                if len(buckets) == wire.SPAN_BUCKETS and state in _STATUS:
                    process.spans[(int(code_id), int(state))] = (int(count), int(sum_ns), buckets)
            except (TypeError, ValueError):
                continue
        process.runtime = {k: v for k, v in metrics.items() if k != "spans"}
        process.dropped = {str(k): int(v) for k, v in (stats.get("dropped") or {}).items()}
        process.buffer_fill = float(stats.get("buffer_fill") or 0.0)
        bursts = stats.get("bursts")
        if isinstance(bursts, dict):
            process.recording = bool(bursts.get("recording", True))
            share = bursts.get("share")
            if isinstance(share, (int, float)) and 0.0 < share <= 1.0:
                process.recorded_share = float(share)

    def ended(self, session: ProcessSession, lost: bool) -> None:
        """The process detached or exited: keep its span totals in its service's series."""
        process = self._processes.get(id(session))
        if process is None or process.ended_at is not None:
            return
        process.ended_at = time.monotonic()
        if lost:
            service = session.service_name
            self.processes_lost[service] = self.processes_lost.get(service, 0) + 1
        for (code_id, state), (count, sum_ns, buckets) in process.spans.items():
            key = (session.service_name, self._span_name(session, code_id), state)
            self._retired.setdefault(key, _Histogram()).add(count, sum_ns, buckets)
        process.spans.clear()

    # -- scrape side --------------------------------------------------------------------

    def live(self) -> list[_Process]:
        """Processes still connected (and forget those gone for longer than stale_after)."""
        now = time.monotonic()
        for key, process in list(self._processes.items()):
            if process.ended_at is not None and now - process.ended_at > self.stale_after:
                del self._processes[key]
        return list(self._processes.values())

    def span_histograms(self) -> dict[tuple[str, str, str], _Histogram]:
        """(service, span name, status code) -> cumulative histogram, over all processes."""
        merged: dict[tuple[str, str, str], _Histogram] = {}
        for (service, name, state), histogram in self._retired.items():
            key = (service, name, _STATUS[state])
            merged.setdefault(key, _Histogram()).add(
                histogram.count, histogram.sum_ns, histogram.buckets
            )
        for process in self.live():
            session = process.session
            for (code_id, state), (count, sum_ns, buckets) in process.spans.items():
                key = (session.service_name, self._span_name(session, code_id), _STATUS[state])
                merged.setdefault(key, _Histogram()).add(count, sum_ns, buckets)
        return merged

    @staticmethod
    def _span_name(session: ProcessSession, code_id: int) -> str:
        return session.span_name(code_id)
