"""How a target is run in each mode. A mode is a small function that builds the command line;
modes that act on an already running target (attach, detach) add an `on_ready` step.

To add a mode: write its command function (and `on_ready` if it needs the target running
first), then register it in MODES. The order of MODES is the order within a round.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .procs import BenchError, Child, Children, pinned
from .receiver import Receiver

__all__ = ["MODES", "Mode", "ModeContext", "Started"]

ATTACH_TIMEOUT = 60.0  # CLI start-up plus injection, on a loaded machine
DETACH_TIMEOUT = 60.0  # the session flushes what it captured, then exits
DWELL = 2.0  # seconds an `after-detach` target runs its workload while attached


@dataclass(frozen=True)
class ModeContext:
    """What a mode needs to build its processes."""

    python: str  # interpreter of the target
    endpoint: str  # the OTLP receiver
    service: str  # service.name of this run, so the receiver can count its spans
    target_cpu: int | None
    collector_cpu: int | None  # the async-inspect CLI (None: not pinned)
    load_cpu: int | None  # the load generator's, metered as "load core"
    children: Children
    receiver: Receiver
    round: int = 1
    build: str | None = None  # another async-inspect work tree to run the CLI from

    def start(self, name: str, argv: list[str]) -> Child:
        """Start a process of this mode: from `build` when set (its CLI, hence its agent:
        `python -m profiler` finds the package in the working directory first)."""
        if self.build is None:
            return self.children.start(name, argv)
        return self.children.start(name, argv, env={"PYTHONPATH": self.build}, cwd=self.build)


Check = Callable[[], None]  # raises BenchError when what it checks does not hold


@dataclass
class Started:
    """A target being measured: `outer` carries its stdout; `collector` is the CLI to meter.

    `checks` run after the measurement window (a mode's proof that it did what it says);
    `facts` are numbers a mode reports besides the workload's metrics.
    """

    outer: Child
    target_pid: int
    collector: Child | None
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, float] = field(default_factory=dict)


Command = Callable[[ModeContext, list[str]], list[str]]
Exercise = Callable[[float], None]  # run the workload's load for that many seconds
OnReady = Callable[[ModeContext, Started, Exercise], None]


def cli(ctx: ModeContext, *args: str) -> list[str]:
    """`async-inspect ARGS...` on the collector CPU, from this interpreter's environment."""
    return pinned(ctx.collector_cpu, [sys.executable, "-m", "profiler", *args])


def baseline(ctx: ModeContext, target: list[str]) -> list[str]:
    """Plain python on the target CPU."""
    return pinned(ctx.target_cpu, [ctx.python, *target])


def under_run(*flags: str) -> Command:
    """`async-inspect run FLAGS -- setsid python TARGET` (the CLI spawns the pinned target).

    `setsid` (no fork: the target is not a group leader) gives the target a session, hence a
    scheduler autogroup, of its own, as in every other mode. Sharing the CLI's would split
    that group's weight between the two CPUs by load: the busier the CLI, the less the target
    weighs against other sessions' work on its CPU, an artefact of a shared machine that
    would read as our overhead. The runner stops the target's group too."""

    def command(ctx: ModeContext, target: list[str]) -> list[str]:
        run = ["run", "--service-name", ctx.service, *flags]
        return [*cli(ctx, *run), "--", "setsid", *baseline(ctx, target)]

    return command


def exporting(*flags: str) -> Command:
    """`under_run` with `--endpoint <receiver>` first."""

    def command(ctx: ModeContext, target: list[str]) -> list[str]:
        return under_run("--endpoint", ctx.endpoint, *flags)(ctx, target)

    return command


def sampled(ratio: str) -> Command:
    """Export with `--sampler traceidratio --sampler-arg RATIO`."""
    return exporting("--sampler", "traceidratio", "--sampler-arg", ratio)


def in_bursts(ratio: str, burst: str) -> Command:
    """Export with `--burst BURST` at that ratio: the ratio's share of the time recorded,
    every event off in between (profiler/agent/bursts.py)."""
    return exporting("--burst", burst, "--sampler", "traceidratio", "--sampler-arg", ratio)


def otel_peer(ctx: ModeContext, target: list[str]) -> list[str]:
    """The target instruments itself with OpenTelemetry's aiohttp-server instrumentation,
    exporting to the receiver through the SDK (targets/otel_peer.py reads these variables)."""
    env = ["env", f"BENCH_OTEL_PEER_ENDPOINT={ctx.endpoint}", f"OTEL_SERVICE_NAME={ctx.service}"]
    return [*env, *baseline(ctx, target)]


# ---- attach and detach: act on a target started as in `baseline` ---------------------------


def _start_attach(ctx: ModeContext, pid: int, service: str) -> Child:
    """`async-inspect attach PID` exporting to the receiver; returns once the agent reported."""
    session = ctx.start(
        f"attach-{service}",
        cli(ctx, "attach", str(pid), "--endpoint", ctx.endpoint,
            "--service-name", service, "--no-tree"),
    )  # fmt: skip
    session.expect_stderr("async-inspect: attached to PID", ATTACH_TIMEOUT)
    return session


def _threads(pid: int) -> set[int]:
    """The thread ids of `pid` now."""
    try:
        return {thread.id for thread in psutil.Process(pid).threads()}
    except psutil.Error as exc:
        raise BenchError(f"cannot read the threads of PID {pid}: {exc}") from None


def attach(ctx: ModeContext, started: Started, exercise: Exercise) -> None:
    """Attach for the whole measurement: the CLI is metered, its session must end by itself
    when the target exits (every span flushed)."""
    started.collector = _start_attach(ctx, started.target_pid, ctx.service)


def attach_then_detach(ctx: ModeContext, started: Started, exercise: Exercise) -> None:
    """Attach, let the workload run `DWELL` s, detach (Ctrl-C in odd rounds, `async-inspect
    detach PID` in even ones), then measure a target that must show no trace of us."""
    pid = started.target_pid
    threads_before = _threads(pid)
    service = f"{ctx.service}-attached"
    session = _start_attach(ctx, pid, service)
    exercise(DWELL)
    if ctx.round % 2:
        session.signal(signal.SIGINT)
        how = "Ctrl-C"
    else:
        detach = ctx.start(f"detach-{ctx.service}", cli(ctx, "detach", str(pid)))
        status = detach.wait(DETACH_TIMEOUT)
        ctx.children.stop(detach)
        if status != 0:
            raise BenchError(f"`detach {pid}` failed ({status}):\n{detach.stderr_tail()}")
        how = "detach PID"
    status = session.wait(DETACH_TIMEOUT)
    log = session.stderr_path.read_text(errors="replace")
    ctx.children.stop(session)
    if status != 0 or f"detached from PID {pid}" not in log:
        raise BenchError(f"the attach session did not detach ({how}, status {status}):\n{log}")
    while_attached = ctx.receiver.received(service).spans
    if not while_attached:
        raise BenchError(f"0 spans while attached ({how}): the agent did not trace")
    started.facts["spans_while_attached"] = while_attached
    # The agent's sender thread must be gone (the app's own threads may end, e.g. W1's
    # stdin reader once it read "go").
    started.facts["new_threads_after_detach"] = len(_threads(pid) - threads_before)

    def nothing_left() -> None:
        extra = _threads(pid) - threads_before
        if extra:
            raise BenchError(f"{len(extra)} thread(s) started by the attach still run ({how})")
        later = ctx.receiver.received(service).spans
        if later != while_attached:
            raise BenchError(f"{later - while_attached} spans arrived after detach ({how})")

    started.checks.append(nothing_left)


# ---- the machine itself: a plain target beside a busy neighbour -----------------------------

NEIGHBOUR_DUTY = "0.2"  # about the CLI's share of a core under W2 at full capture
NEIGHBOUR = str(Path(__file__).resolve().parent / "targets" / "neighbour.py")


def busy_neighbour(ctx: ModeContext, started: Started, exercise: Exercise) -> None:
    """A plain target, with a busy loop taking NEIGHBOUR_DUTY of the collector CPU during the
    measurement: what a CLI's CPU use costs the target through the machine alone."""
    neighbour = ctx.start(
        f"neighbour-{ctx.service}",
        pinned(ctx.collector_cpu, [sys.executable, NEIGHBOUR, "--duty", NEIGHBOUR_DUTY]),
    )
    started.checks.append(lambda: ctx.children.stop(neighbour))


# ---- a tracer that does nothing, on the agent's events -----------------------------------

NOOP_TRACER = str(Path(__file__).resolve().parent / "targets" / "noop_tracer.py")


def noop_tracer(*flags: str) -> Command:
    """The target under the agent's sys.monitoring events with Python callbacks that do
    nothing (targets/noop_tracer.py); with `--steps`, the events of a design that follows
    task steps instead of every coroutine's resumes and yields."""

    def command(ctx: ModeContext, target: list[str]) -> list[str]:
        return pinned(ctx.target_cpu, [ctx.python, NOOP_TRACER, *flags, *target])

    return command


@dataclass(frozen=True)
class Mode:
    """One way of running the target: `command` starts it, `on_ready` may act on it after."""

    name: str
    command: Command
    under_cli: bool  # the started process is the async-inspect CLI (meter its CPU)
    exported_share: float  # share of traces that should reach the receiver (0: no export)
    on_ready: OnReady | None = None
    workloads: frozenset[str] | None = None  # the workloads it applies to (None: all)
    # Run from a copy whose agent is built with this macro (benchmarks/floor.py), or None.
    build_macro: str | None = None

    def applies_to(self, workload: str) -> bool:
        """Whether this mode is run for `workload`."""
        return self.workloads is None or workload in self.workloads


AIOHTTP = frozenset({"W2", "W3"})

MODES: dict[str, Mode] = {
    mode.name: mode
    for mode in (
        Mode("baseline", baseline, under_cli=False, exported_share=0.0),
        Mode("run-full", exporting(), under_cli=True, exported_share=1.0),
        Mode("run-10pct", sampled("0.1"), under_cli=True, exported_share=0.1),
        Mode("run-1pct", sampled("0.01"), under_cli=True, exported_share=0.01),
        # One burst per 5 s measurement window, wherever the window falls: W2 and W3 only
        # (W1's 3 s window would hold no burst in most rounds).
        Mode("run-burst-10pct", in_bursts("0.1", "0.5"), under_cli=True, exported_share=0.1,
             workloads=AIOHTTP),
        Mode("run-burst-1pct", in_bursts("0.01", "0.05"), under_cli=True, exported_share=0.01,
             workloads=AIOHTTP),
        # One burst as the target starts, before any load: attached, and paused for 500 s.
        Mode("run-paused", in_bursts("0.0001", "0.05"), under_cli=True, exported_share=0.0001),
        Mode("run-noexport", under_run("--no-tree"), under_cli=True, exported_share=0.0),
        Mode("attached", baseline, under_cli=False, exported_share=1.0, on_ready=attach),
        Mode("after-detach", baseline, under_cli=False, exported_share=0.0,
             on_ready=attach_then_detach),
        Mode("peer-otel", otel_peer, under_cli=False, exported_share=1.0, workloads=AIOHTTP),
        Mode("busy-neighbour", baseline, under_cli=False, exported_share=0.0,
             on_ready=busy_neighbour),
        Mode("noop-tracer", noop_tracer(), under_cli=False, exported_share=0.0),
        Mode("noop-tracer-steps", noop_tracer("--steps"), under_cli=False, exported_share=0.0),
        # `run --endpoint` whose callbacks return at once: no span may reach the receiver.
        Mode("floor", exporting(), under_cli=True, exported_share=0.0,
             build_macro="AI_BENCH_FLOOR"),
        # `run --endpoint` whose callbacks only append each traced event to a ring.
        Mode("records", exporting(), under_cli=True, exported_share=0.0,
             build_macro="AI_BENCH_RECORDS"),
    )
}  # fmt: skip
