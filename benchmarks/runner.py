"""One measurement: start a target in a mode, drive its workload, collect what it cost.

`measure_once` runs one target alone on the target CPU; `measure_pair` runs a plain
baseline and a target in some mode side by side on that CPU, loaded at the same time, so
whatever else the machine does at that moment slows both alike.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from .cli_log import CliLog, read_cli_log
from .meter import Meter, Window
from .modes import Mode, ModeContext, Started
from .procs import BenchError, Children, prioritize
from .receiver import Received, Receiver
from .workloads import Workload, field_value

__all__ = ["Sample", "measure_once", "measure_pair"]

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
    pair: int = 0  # side by side: the pair it ran in (0: it ran alone)
    reference: bool = False  # the plain baseline of its pair, which the other is compared to

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
    run = _Run(workload, mode, ctx, Sample(workload.name, mode.name, round_no))
    run.launch()
    if run.sample.error is None:
        run.attempt(run.ready)
        run.attempt(partial(run.take, receiver.child.pid))
        run.attempt(run.wind_up)
    run.close(receiver, TARGET_SHARE_MIN)
    return run.sample


def measure_pair(
    workload: Workload,
    modes: tuple[Mode, Mode],
    contexts: tuple[ModeContext, ModeContext],
    receiver: Receiver,
    round_no: int,
    pair_no: int,
) -> tuple[Sample, Sample]:
    """Run `workload` on two targets side by side on the target CPU: the first (the
    reference, a plain baseline) and the second, started one after the other, then loaded
    at the same time through the whole measurement, each by its own load generator. Each
    gets about half of the CPU; their ratio is then free of what else the machine does,
    which slows both alike. Failures are recorded in the Samples, not raised."""
    runs = [
        _Run(workload, mode, ctx, Sample(workload.name, mode.name, round_no, pair=pair_no))
        for mode, ctx in zip(modes, contexts, strict=True)
    ]
    runs[0].sample.reference = True
    for run in runs:
        run.launch()
    if all(run.sample.error is None for run in runs):
        for run in runs:
            run.attempt(run.ready)
        failed = [run.sample.mode for run in runs if run.sample.error is not None]
        for run in runs:
            if failed and run.sample.error is None:
                run.sample.error = f"not measured: its pair's other target ({failed[0]}) failed"
        pid = receiver.child.pid
        _together([partial(run.attempt, partial(run.take, pid)) for run in runs])
        for run in runs:
            run.attempt(run.wind_up)
    for run in runs:
        run.close(receiver, None)
    _check_pair_cpu(runs[0].sample, runs[1].sample)
    return runs[0].sample, runs[1].sample


def _together(steps: list[Callable[[], None]]) -> None:
    """Run each step in its own thread, all at once; return when all are done."""
    threads = [threading.Thread(target=step, daemon=True) for step in steps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


class _Run:
    """One target through its measurement: launch, ready, take, wind up, close. Each step
    runs only while nothing failed; a failure is recorded in the Sample."""

    def __init__(self, workload: Workload, mode: Mode, ctx: ModeContext, sample: Sample) -> None:
        self.workload, self.mode, self.ctx, self.sample = workload, mode, ctx, sample
        self.begun = time.monotonic()
        self.started: Started | None = None
        self.ready_line = ""

    def attempt(self, step: Callable[[], None]) -> None:
        """`step()`, unless a step before failed; a BenchError becomes the Sample's error."""
        if self.sample.error is not None or self.started is None:
            return
        try:
            step()
        except BenchError as exc:
            self.sample.error = str(exc)

    def launch(self) -> None:
        name = f"{self.workload.name}-{self.mode.name}-r{self.sample.round}"
        if self.sample.pair:
            name += "-ref" if self.sample.reference else "-beside"
        try:
            outer = self.ctx.start(name, self.mode.command(self.ctx, self.workload.target()))
        except BenchError as exc:
            self.sample.error = str(exc)
            return
        self.started = Started(outer, 0, outer if self.mode.under_cli else None)

    def ready(self) -> None:
        """Wait for READY; the target's own session and priority; the mode's `on_ready`."""
        started, ctx = self._started(), self.ctx
        self.ready_line = started.outer.expect("READY", READY_TIMEOUT)
        started.target_pid = int(field_value(self.ready_line, "pid"))
        if started.target_pid != started.outer.pid and _leads_group(started.target_pid):
            ctx.children.adopt_group(started.target_pid)  # under `run ... -- setsid`
        if ctx.children.nice:
            prioritize(started.target_pid, ctx.children.nice)  # its own session: see under_run
        if self.mode.on_ready is not None:
            workload, ready = self.workload, self.ready_line
            try:
                self.mode.on_ready(
                    ctx, started, lambda seconds: workload.exercise(started, ready, seconds)
                )
            finally:
                self.sample.facts.update(started.facts)

    def take(self, receiver_pid: int) -> None:
        """The measurement itself: warm-up, then the metered window."""
        started, ctx = self._started(), self.ctx
        collector_pid = started.collector.pid if started.collector is not None else None
        meter = Meter(started.target_pid, collector_pid, receiver_pid, ctx.target_cpu, ctx.load_cpu)
        sample = self.sample
        sample.metrics, sample.window = self.workload.measure(started, self.ready_line, meter)
        for metric in self.workload.metrics:
            value = metric.derive(sample.metrics, sample.window.target_share)
            if value is not None:
                sample.metrics[metric.key] = value

    def wind_up(self) -> None:
        """The mode's checks; then the target (and the CLI around it) exits by itself,
        exports flushed."""
        started = self._started()
        for check in started.checks:
            check()
        self.workload.finish(started)
        self.sample.exit_status = started.outer.wait(EXIT_TIMEOUT)
        if self.sample.exit_status != 0:
            raise BenchError(
                f"{started.outer.name} exited with status {self.sample.exit_status}; "
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

    def close(self, receiver: Receiver, share_min: float | None) -> None:
        """Stop what is left; what the CLI and the receiver say; the Sample's checks (the
        CPU share only against `share_min`, when given)."""
        sample, started = self.sample, self.started
        if started is not None:
            _stop(self.ctx.children, started)
            if started.collector is not None:
                sample.cli = read_cli_log(started.collector.stderr_path)
        sample.wall_s = time.monotonic() - self.begun
        try:
            sample.received = receiver.received(self.ctx.service)
        except BenchError as exc:
            sample.error = sample.error or str(exc)
        if sample.error is None:
            _check(sample, self.mode)
            if sample.window is not None and share_min is not None:
                _check_cpu(sample, sample.window, share_min)

    def _started(self) -> Started:
        if self.started is None:
            raise BenchError("the target was not launched")
        return self.started


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


def _check_cpu(sample: Sample, window: Window, share_min: float) -> None:
    """Warn when the target did not get (or need) its whole CPU during the window."""
    share, busy = window.target_share, window.target_core_busy
    if share is None or share >= share_min:
        return
    why = _short_of_cpu(share, busy)
    sample.warnings.append(f"the target got {100 * share:.0f}% of a CPU: {why}")


def _check_pair_cpu(first: Sample, second: Sample) -> None:
    """Side by side, the two targets together should have had their whole CPU; they need
    not have split it evenly (the slower one asks for more)."""
    windows = [s.window for s in (first, second) if s.ok and s.window is not None]
    shares = [w.target_share for w in windows if w.target_share is not None]
    if len(shares) < 2 or sum(shares) >= TARGET_SHARE_MIN:
        return
    busiest = max((w.target_core_busy for w in windows if w.target_core_busy), default=None)
    why = _short_of_cpu(sum(shares), busiest)
    for sample in (first, second):
        sample.warnings.append(f"the pair got {100 * sum(shares):.0f}% of a CPU: {why}")


def _short_of_cpu(share: float, busy: float | None) -> str:
    """Why targets got only `share` of their CPU, which was busy `busy` of the time."""
    if busy is not None and busy - share > FOREIGN_LOAD:
        return f"other processes used {100 * (busy - share):.0f}% of the CPU"
    return "not saturated: the load generator may have set the pace"


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
