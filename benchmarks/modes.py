"""How a target is run in each mode. A mode is a small function that builds the command line;
modes that act on an already running target (attach) add an `on_ready` step.

To add a mode: write its command function (and `on_ready` if it needs the target running
first), then register it in MODES. The order of MODES is the order within a round.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from .procs import Child, Children, pinned

__all__ = ["MODES", "Mode", "ModeContext", "Started"]


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


@dataclass
class Started:
    """A target being measured: `outer` carries its stdout; `collector` is the CLI to meter."""

    outer: Child
    target_pid: int
    collector: Child | None


Command = Callable[[ModeContext, list[str]], list[str]]
OnReady = Callable[[ModeContext, Started], None]


def cli(ctx: ModeContext, *args: str) -> list[str]:
    """`async-inspect ARGS...` on the collector CPU, from this interpreter's environment."""
    return pinned(ctx.collector_cpu, [sys.executable, "-m", "profiler", *args])


def baseline(ctx: ModeContext, target: list[str]) -> list[str]:
    """Plain python on the target CPU."""
    return pinned(ctx.target_cpu, [ctx.python, *target])


def under_run(*flags: str) -> Command:
    """`async-inspect run FLAGS -- python TARGET` (the CLI spawns the pinned target)."""

    def command(ctx: ModeContext, target: list[str]) -> list[str]:
        run = ["run", "--service-name", ctx.service, *flags]
        return [*cli(ctx, *run), "--", *baseline(ctx, target)]

    return command


def exporting(*flags: str) -> Command:
    """`under_run` with `--endpoint <receiver>` first."""

    def command(ctx: ModeContext, target: list[str]) -> list[str]:
        return under_run("--endpoint", ctx.endpoint, *flags)(ctx, target)

    return command


@dataclass(frozen=True)
class Mode:
    """One way of running the target: `command` starts it, `on_ready` may act on it after."""

    name: str
    command: Command
    under_cli: bool  # the started process is the async-inspect CLI (meter its CPU)
    exported_share: float  # share of traces that should reach the receiver (0: no export)
    on_ready: OnReady | None = None


def sampled(ratio: str) -> Command:
    """Export with `--sampler traceidratio --sampler-arg RATIO`."""
    return exporting("--sampler", "traceidratio", "--sampler-arg", ratio)


MODES: dict[str, Mode] = {
    mode.name: mode
    for mode in (
        Mode("baseline", baseline, under_cli=False, exported_share=0.0),
        Mode("run-full", exporting(), under_cli=True, exported_share=1.0),
        Mode("run-10pct", sampled("0.1"), under_cli=True, exported_share=0.1),
        Mode("run-1pct", sampled("0.01"), under_cli=True, exported_share=0.01),
        Mode("run-noexport", under_run("--no-tree"), under_cli=True, exported_share=0.0),
        # ---- attach / detach modes: add here (`async-inspect attach|detach PID` exist) ----
        # The target starts as in `baseline`; `on_ready` runs once it printed READY (before
        # warm-up) and sets `started.collector` to the CLI process whose CPU is metered, e.g.
        #
        #   def attach(ctx: ModeContext, started: Started) -> None:
        #       started.collector = ctx.children.start("attach", cli(ctx, "attach",
        #           str(started.target_pid), "--endpoint", ctx.endpoint,
        #           "--service-name", ctx.service))
        #       started.collector.expect_stderr("attached to PID", timeout=30)
        #
        #   def attach_then_detach(ctx: ModeContext, started: Started) -> None:
        #       attach(ctx, started)
        #       ...run `cli(ctx, "detach", str(started.target_pid))` to completion...
        #
        #   Mode("attached", baseline, under_cli=False, exported_share=1.0, on_ready=attach),
        #   Mode("after-detach", baseline, under_cli=False, exported_share=0.0,
        #        on_ready=attach_then_detach),
        #
        # The runner meters `started.collector`, reads its stderr (cli_log.OBSERVING is the
        # line that proves an agent reported: match attach's wording there), stops every child.
    )
}
