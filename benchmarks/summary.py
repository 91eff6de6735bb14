"""From samples to per-mode figures: each mode's ratio to its baseline: the plain target that
ran beside it (side by side), or the baseline of the same round (one at a time)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from .runner import Sample
from .workloads import Metric

__all__ = ["ModeSummary", "Spread", "percentile", "spread", "summarize"]

BASELINE = "baseline"


@dataclass(frozen=True)
class Spread:
    """Median with min and max over the rounds."""

    median: float
    min: float
    max: float
    n: int


def spread(values: Sequence[float]) -> Spread | None:
    """The Spread of `values`, or None when there are none."""
    if not values:
        return None
    return Spread(statistics.median(values), min(values), max(values), len(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The `q` quantile (0-1) of `values`, linearly interpolated (NaN when there are none)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class ModeSummary:
    """Everything the table shows for one workload x mode."""

    workload: str
    mode: str
    ratios: dict[str, Spread | None] = field(default_factory=dict)  # metric -> to baseline
    absolute: dict[str, Spread | None] = field(default_factory=dict)
    spans_received: Spread | None = None
    export_requests: Spread | None = None
    export_mbytes: Spread | None = None
    spans_handed: Spread | None = None  # the CLI's own count of spans it gave its outputs
    lost_in_cli: Spread | None = None  # handed on but never received (exporter queue full)
    lost_reported: Spread | None = None  # what the CLI itself says it lost
    collector_cpu_s: Spread | None = None
    collector_cpu_share: Spread | None = None  # CPU seconds / window seconds
    receiver_cpu_share: Spread | None = None
    target_share: Spread | None = None  # CPU the target process got / window seconds
    target_core_busy: Spread | None = None
    load_core_busy: Spread | None = None
    agent_dropped: dict[str, Spread | None] = field(default_factory=dict)
    queue_full_runs: int = 0  # runs whose CLI warned that its export queue was full
    http_errors: Spread | None = None
    facts: dict[str, Spread | None] = field(default_factory=dict)  # a mode's own numbers
    unexpected: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    rounds: int = 0


def summarize(
    samples: Sequence[Sample], workload: str, metrics: Sequence[Metric], modes: Sequence[str]
) -> list[ModeSummary]:
    """One ModeSummary per mode of `workload`, in `modes` order."""
    mine = [s for s in samples if s.workload == workload]
    return [_summarize_mode(mine, workload, mode, metrics) for mode in modes]


def baseline_of(samples: Sequence[Sample], sample: Sample) -> Sample | None:
    """The baseline `sample` is compared to: its pair's reference when it ran side by side,
    else the baseline of its round; None if that one failed or there is none."""
    for other in samples:
        if not other.ok or other is sample:
            continue
        if sample.pair and other.pair == sample.pair and other.reference:
            return other  # plain python, or the same mode from another build (--against)
        alone = not sample.pair and not other.pair
        if alone and other.round == sample.round and other.mode == BASELINE:
            return other
    return None


def _summarize_mode(
    samples: Sequence[Sample], workload: str, mode: str, metrics: Sequence[Metric]
) -> ModeSummary:
    runs = [s for s in samples if s.mode == mode and not s.reference]
    good = [s for s in runs if s.ok]
    side_by_side = any(s.pair for s in runs)
    if mode == BASELINE and side_by_side:
        # Side by side, the baseline row is plain python beside plain python: the noise
        # floor of the method itself. Its absolute figures are every reference's.
        references = [s for s in samples if s.mode == mode and s.reference and s.ok]
        return _summarize_compared(samples, runs, workload, mode, metrics, references)
    if mode != BASELINE:
        return _summarize_compared(samples, runs, workload, mode, metrics, good)
    summary = ModeSummary(workload, mode, rounds=len(runs))
    for metric in metrics:
        key = metric.key
        summary.absolute[key] = spread([s.metrics[key] for s in good if key in s.metrics])
        # The noise floor: each round's baseline against their median.
        middle = summary.absolute[key]
        summary.ratios[key] = spread(
            [s.metrics[key] / middle.median for s in good if key in s.metrics]
            if middle is not None and middle.median
            else []
        )
    return _finish(summary, runs, good)


def _summarize_compared(
    samples: Sequence[Sample],
    runs: Sequence[Sample],
    workload: str,
    mode: str,
    metrics: Sequence[Metric],
    absolute: Sequence[Sample],
) -> ModeSummary:
    """A mode against its baselines; its absolute figures are those of `absolute`."""
    good = [s for s in runs if s.ok]
    summary = ModeSummary(workload, mode, rounds=len(runs))
    pairs = [(s, baseline_of(samples, s)) for s in good]
    for metric in metrics:
        key = metric.key
        summary.absolute[key] = spread([s.metrics[key] for s in absolute if key in s.metrics])
        summary.ratios[key] = spread(
            [
                s.metrics[key] / base.metrics[key]
                for s, base in pairs
                if base is not None and key in s.metrics and base.metrics.get(key)
            ]
        )
    summary = _finish(summary, runs, good)
    pairs_run = {s.pair for s in runs if s.pair}
    summary.failures += [
        f"round {s.round}, the plain target beside it: {s.error}"
        for s in samples
        if s.reference and s.pair in pairs_run and s.error is not None
    ]
    return summary


def _finish(summary: ModeSummary, runs: Sequence[Sample], good: Sequence[Sample]) -> ModeSummary:
    """What every row has besides its ratios: costs, facts, logs, failures, warnings."""
    _add_costs(summary, good)
    for name in sorted({name for s in good for name in s.facts}):
        summary.facts[name] = spread([s.facts[name] for s in good if name in s.facts])
    _add_logs(summary, good)
    summary.failures = [f"round {s.round}: {s.error}" for s in runs if not s.ok]
    summary.warnings = [f"round {s.round}: {w}" for s in runs for w in s.warnings]
    return summary


def _add_costs(summary: ModeSummary, good: Sequence[Sample]) -> None:
    received = [s.received for s in good if s.received is not None]
    summary.spans_received = spread([r.spans for r in received])
    summary.export_requests = spread([r.requests for r in received])
    summary.export_mbytes = spread([r.bytes / 1e6 for r in received])
    windows = [s.window for s in good if s.window is not None]
    cpu = [(w.collector_cpu_s, w.seconds) for w in windows if w.collector_cpu_s is not None]
    summary.collector_cpu_s = spread([c for c, _ in cpu])
    summary.collector_cpu_share = spread([c / w for c, w in cpu if w > 0])
    summary.receiver_cpu_share = spread(
        [
            w.receiver_cpu_s / w.seconds
            for w in windows
            if w.receiver_cpu_s is not None and w.seconds
        ]
    )
    summary.target_share = spread([w.target_share for w in windows if w.target_share is not None])
    summary.target_core_busy = spread(
        [w.target_core_busy for w in windows if w.target_core_busy is not None]
    )
    summary.load_core_busy = spread(
        [w.load_core_busy for w in windows if w.load_core_busy is not None]
    )
    summary.http_errors = spread([s.metrics["errors"] for s in good if "errors" in s.metrics])


def _add_logs(summary: ModeSummary, good: Sequence[Sample]) -> None:
    logs = [s.cli for s in good if s.cli is not None]
    if not logs:
        return
    summary.spans_handed = spread([g.spans_handed for g in logs if g.spans_handed is not None])
    summary.lost_in_cli = spread(
        [
            s.cli.spans_handed - s.received.spans
            for s in good
            if s.cli is not None
            and s.cli.spans_handed is not None
            and s.received is not None
            and s.received.requests  # a mode that exports
        ]
    )
    summary.lost_reported = spread([g.spans_lost or 0 for g in logs if g.spans_handed is not None])
    summary.queue_full_runs = sum(1 for g in logs if g.queue_full)
    reasons = sorted({reason for g in logs for reason in g.agent_dropped})
    summary.agent_dropped = {
        reason: spread([g.agent_dropped.get(reason, 0) for g in logs]) for reason in reasons
    }
    for log in logs:
        for line in log.unexpected:
            if line not in summary.unexpected:
                summary.unexpected.append(line)
