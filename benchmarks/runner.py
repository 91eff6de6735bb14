"""One measurement: start a target in a mode, drive its workload, collect what it cost."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from .cli_log import CliLog, read_cli_log
from .meter import Meter, Window
from .modes import Mode, ModeContext, Started
from .procs import BenchError, Children, prioritize
from .receiver import Received, Receiver
from .workloads import Workload, field_value

__all__ = ["Sample", "measure_once"]

READY_TIMEOUT = 60.0  # CLI start, agent handshake, imports of the target
EXIT_TIMEOUT = 60.0  # the CLI waits up to 5 s for the agent, then flushes its exporter
TARGET_SHARE_MIN = 0.9  # a target that got less CPU than this did not set the pace
FOREIGN_LOAD = 0.05  # its core busier than the target by more than this: someone else ran


@dataclass
class Sample:
    """The outcome of one target process: metrics, costs, and what went wrong if anything."""

    workload: str
    mode: str
    round: int
    metrics: dict[str, float] = field(default_factory=dict)
    window: Window | None = None
    received: Received | None = None
    cli: CliLog | None = None
    exit_status: int | None = None
    facts: dict[str, float] = field(default_factory=dict)  # what the mode itself reported
    wall_s: float = 0.0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """A usable measurement (metrics taken, nothing failed)."""
        return self.error is None and bool(self.metrics)


def measure_once(
    workload: Workload,
    mode: Mode,
    ctx: ModeContext,
    receiver: Receiver,
    round_no: int,
) -> Sample:
    """Run `workload` once in `mode`; failures are recorded in the Sample, not raised."""
    sample = Sample(workload.name, mode.name, round_no)
    begun = time.monotonic()
    try:
        started = _launch(workload, mode, ctx, sample)
    except BenchError as exc:
        sample.error = str(exc)
        return sample
    try:
        _drive(workload, mode, ctx, started, sample, receiver.child.pid)
    except BenchError as exc:
        sample.error = str(exc)
    finally:
        _stop(ctx.children, started)
        if started.collector is not None:
            sample.cli = read_cli_log(started.collector.stderr_path)
        sample.wall_s = time.monotonic() - begun
    try:
        sample.received = receiver.received(ctx.service)
    except BenchError as exc:
        sample.error = sample.error or str(exc)
    if sample.error is None:
        _check(sample, mode)
    return sample


def _launch(workload: Workload, mode: Mode, ctx: ModeContext, sample: Sample) -> Started:
    name = f"{workload.name}-{mode.name}-r{sample.round}"
    outer = ctx.children.start(name, mode.command(ctx, workload.target()))
    return Started(outer, 0, outer if mode.under_cli else None)


def _drive(
    workload: Workload,
    mode: Mode,
    ctx: ModeContext,
    started: Started,
    sample: Sample,
    receiver_pid: int,
) -> None:
    """Wait for READY, run the mode's `on_ready`, measure, then let the target exit."""
    ready = started.outer.expect("READY", READY_TIMEOUT)
    started.target_pid = int(field_value(ready, "pid"))
    if started.target_pid != started.outer.pid and _leads_group(started.target_pid):
        ctx.children.adopt_group(started.target_pid)  # under `run ... -- setsid`
    if ctx.children.nice:
        prioritize(started.target_pid, ctx.children.nice)  # its own session: see under_run
    if mode.on_ready is not None:
        try:
            mode.on_ready(ctx, started, lambda seconds: workload.exercise(started, ready, seconds))
        finally:
            sample.facts.update(started.facts)
    collector_pid = started.collector.pid if started.collector is not None else None
    meter = Meter(started.target_pid, collector_pid, receiver_pid, ctx.target_cpu, ctx.load_cpu)
    sample.metrics, sample.window = workload.measure(started, ready, meter)
    for metric in workload.metrics:
        value = metric.derive(sample.metrics, sample.window.target_share)
        if value is not None:
            sample.metrics[metric.key] = value
    for check in started.checks:
        check()
    # Let the target (and the CLI around it) exit by itself, exports flushed.
    workload.finish(started)
    sample.exit_status = started.outer.wait(EXIT_TIMEOUT)
    if sample.exit_status != 0:
        raise BenchError(
            f"{started.outer.name} exited with status {sample.exit_status}; "
            f"stderr:\n{started.outer.stderr_tail()}"
        )
    session = started.collector
    if session is not None and session is not started.outer:
        # An attach session ends by itself when its target exits, after flushing its spans.
        status = session.wait(EXIT_TIMEOUT)
        if status != 0:
            raise BenchError(
                f"{session.name} exited with status {status}; stderr:\n{session.stderr_tail()}"
            )


def _check(sample: Sample, mode: Mode) -> None:
    """Turn a run that did not trace or export as its mode says into an error or a warning."""
    received = sample.received.spans if sample.received is not None else 0
    log = sample.cli
    handed = log.spans_handed if log is not None and log.spans_handed is not None else 0
    if log is not None and not log.observed:
        sample.error = "no agent reported to the CLI: the target was not traced"
    elif mode.exported_share > 0 and not received:
        if handed or mode.exported_share >= 1.0:
            sample.error = f"the receiver got 0 spans (the CLI handed on {handed}): no export"
        else:
            sample.warnings.append(
                "0 spans: no trace was sampled this round, so export is unverified"
            )
    elif mode.exported_share == 0 and received:
        sample.error = f"the receiver got {received} spans from a mode that must not export"
    if sample.window is not None:
        _check_cpu(sample, sample.window)


def _check_cpu(sample: Sample, window: Window) -> None:
    """Warn when the target did not get (or need) its whole CPU during the window."""
    share, busy = window.target_share, window.target_core_busy
    if share is None or share >= TARGET_SHARE_MIN:
        return
    if busy is not None and busy - share > FOREIGN_LOAD:
        why = f"other processes used {100 * (busy - share):.0f}% of its CPU"
    else:
        why = "it was not saturated: the load generator may have set the pace"
    sample.warnings.append(f"the target got {100 * share:.0f}% of a CPU: {why}")


def _stop(children: Children, started: Started) -> None:
    for child in (started.outer, started.collector):
        if child is not None:
            children.stop(child)
    # A target that leads its own group (under `run ... -- setsid`) outlives the CLI's.
    pid = started.target_pid
    if pid and pid != started.outer.pid:
        children.stop_group(pid)


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except (ProcessLookupError, PermissionError):
        return False
