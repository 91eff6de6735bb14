"""`async-inspect attach PID`: observe a running Python 3.12+ process, then leave no trace."""

from __future__ import annotations

import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

import click

from collector.ingest import Notice
from collector.service import LocalCollector, agent_settings_from
from collector.settings import Settings
from profiler.attach.injector import bootstrap_code, inject_bootstrap
from profiler.attach.process import inspect_process
from profiler.attach.rendezvous import prepare_rendezvous
from profiler.attach.sessions import forget_session, record_session
from profiler.errors import AgentError, AlreadyAttached, AsyncInspectError

from .loop_thread import LoopThread
from .options import collect_options, settings_from_flags
from .report import Reporter, callbacks_note

__all__ = ["attach", "attach_session"]

ORPHAN_TIMEOUT = 10.0  # the agent detaches by itself this long after our socket is gone
DETACH_WAIT = 5.0


class _Stop(Exception):
    """SIGTERM (e.g. from `async-inspect detach`): detach like Ctrl-C does."""


@click.command()
@click.argument("pid", type=int)
@click.option("--duration", type=float, metavar="SECONDS", help="Detach after this long.")
@click.option(
    "--timeout", type=float, default=5.0, show_default=True, metavar="SECONDS",
    help="How long to wait for the agent to report from inside the target.",
)  # fmt: skip
@collect_options
def attach(pid: int, duration: float | None, timeout: float, **flags: Any) -> int:
    """Trace the asyncio tasks of running process PID until Ctrl-C, --duration, or
    `async-inspect detach PID`; then remove every hook from it.

    \b
      async-inspect attach 4242
      async-inspect attach 4242 --duration 30 --endpoint http://127.0.0.1:4317
    """
    settings = settings_from_flags(flags)
    reporter = Reporter(bool(flags.get("quiet")))
    return attach_session(pid, settings, reporter, flags.get("tree"), duration, timeout)


def attach_session(
    pid: int,
    settings: Settings,
    reporter: Reporter,
    tree: bool | None,
    duration: float | None,
    timeout: float,
) -> int:
    """Attach to `pid`, stream until told to stop, detach; returns the exit status."""
    target = inspect_process(pid)
    rendezvous = prepare_rendezvous(target)
    watch = _SessionWatch(pid, reporter)
    draw = tree if tree is not None else settings.endpoint is None
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    outcome = "detached"
    announced = False  # the `attached` line is out
    try:
        # Made once the rendezvous exists, so that an output it cannot open removes it too.
        collector = LocalCollector(
            settings,
            watch.notice,
            sys.stderr if draw else None,
            agent_settings_from(settings, orphan_timeout=ORPHAN_TIMEOUT),
        )
        with LoopThread() as loop:
            address = loop.run(collector.start(rendezvous))
            try:
                code = bootstrap_code(address, collector.token)
                began = time.monotonic()
                method = inject_bootstrap(target, rendezvous, code, watch.confirmed, timeout)
                took = time.monotonic() - began
                if watch.error is not None:
                    raise _agent_error(pid, watch.error)
                record_session(pid)
                bursts = (
                    f"; recording {settings.burst:g}s every {settings.burst_every:g}s"
                    if settings.burst is not None
                    else ""
                )
                reporter.say(
                    f"attached to PID {pid} in {took:.2f}s (Python {target.version_str}, "
                    f"via {method}, "
                    f"{callbacks_note(watch.hello)}){bursts}; Ctrl-C to detach"
                )
                announced = True
                outcome = _stream(watch, duration)
                if outcome != "exited":
                    loop.run(_detach(collector, pid))
            except (KeyboardInterrupt, _Stop):
                if watch.confirmed.is_set():
                    if not announced and watch.error is None:  # gdb held the Ctrl-C back
                        reporter.say(f"interrupted as the agent in PID {pid} reported; detaching")
                elif not _started_after_all(
                    loop.run(collector.agent_arriving()), watch, reporter, pid, timeout
                ):
                    return 130
                loop.run(_detach(collector, pid))
            finally:
                forget_session(pid)
                summary = loop.run(collector.finish(DETACH_WAIT))
    finally:
        signal.signal(signal.SIGTERM, previous)
        rendezvous.remove()
    reporter.summary(summary, settings)
    reporter.say(f"PID {pid} exited" if outcome == "exited" else f"detached from PID {pid}")
    return 0


def _started_after_all(
    arriving: bool, watch: _SessionWatch, reporter: Reporter, pid: int, timeout: float
) -> bool:
    """Interrupted before the agent reported: True once it has (detach it as usual); False,
    having said why, if it never reached us (`arriving`: it has connected or is connecting)
    or did not finish starting in time."""
    if not arriving:
        reporter.error(f"interrupted before the agent started; PID {pid} untouched")
        return False
    # It reached us and is installing itself: let it finish, then detach it as usual.
    reporter.say(
        f"interrupted while the agent starts in PID {pid}; detaching once it has "
        "(Ctrl-C again to leave it to detach by itself)"
    )
    if not watch.confirmed.wait(timeout):
        reporter.error(
            f"the agent in PID {pid} did not start within {timeout:g}s; it detaches by itself "
            f"{ORPHAN_TIMEOUT:g}s after this session ends"
        )
        return False
    if watch.error is not None:
        reporter.error(f"the agent in PID {pid} did not start ({watch.error}); nothing installed")
        return False
    return True


async def _detach(collector: LocalCollector, pid: int) -> None:
    connection = collector.hub.connection_for(pid)
    if connection is not None:
        connection.stop("detach")
        await collector.hub.wait_idle(DETACH_WAIT)


def _stream(watch: _SessionWatch, duration: float | None) -> str:
    """Wait until the duration passes ("duration") or the target exits ("exited")."""
    deadline = time.monotonic() + duration if duration is not None else None
    while not watch.ended.wait(0.2):
        if deadline is not None and time.monotonic() >= deadline:
            return "duration"
    return "exited"


def _agent_error(pid: int, error: str) -> AsyncInspectError:
    code, _, detail = error.partition(": ")
    if code == "already_attached":
        return AlreadyAttached(
            f"PID {pid} is already attached by another async-inspect session ({detail})",
            f"detach it first: async-inspect detach {pid}",
        )
    if code == "no_free_tool_id":
        return AgentError(
            f"PID {pid} cannot be observed: {detail}",
            "another profiler, debugger or coverage tool holds every tool id we may use",
        )
    return AgentError(f"the agent in PID {pid} could not start: {error}")


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    # Once: a second SIGTERM must not cut the detach short (`timeout` sends one to the command
    # and one to its process group). Ctrl-C still can; attach_session restores the handler.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Stop()


class _SessionWatch:
    """Follows the collector's notices about our target (from the collector's thread)."""

    def __init__(self, pid: int, reporter: Reporter) -> None:
        self.pid = pid
        self.reporter = reporter
        self.confirmed = threading.Event()
        self.ended = threading.Event()
        self.error: str | None = None
        self.hello: dict[str, Any] = {}

    def notice(self, notice: Notice) -> None:
        if notice.kind == "started" and notice.pid == self.pid:
            if notice.session is not None:
                self.hello = notice.session.hello
            self.confirmed.set()
            return  # attach_session says "attached" itself, with the method
        if notice.kind == "agent_error" and not self.confirmed.is_set():
            self.error = notice.message
            self.confirmed.set()
            return
        if notice.kind in ("ended", "lost") and notice.pid == self.pid:
            self.ended.set()
            if notice.kind == "ended" and notice.message != "exit":
                return
        self.reporter.notice(notice)
