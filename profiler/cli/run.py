"""`async-inspect run -- COMMAND`: start a command with the agent loaded from its first line."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import click

from collector.service import LocalCollector
from collector.settings import Settings
from profiler.agent.settings import AgentSettings
from profiler.errors import AsyncInspectError
from profiler.launch import launch_environment

from .options import collect_options, settings_from_flags
from .report import Reporter

__all__ = ["run", "run_command"]

AGENT_GRACE = 5.0  # seconds to wait for agents' goodbye after the command exits
NO_AGENT_WARNING = 5.0


class LaunchError(AsyncInspectError):
    """The command could not be started."""

    exit_code = 127


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@collect_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(command: tuple[str, ...], **flags: Any) -> int:
    """Run COMMAND (any Python 3.12+ program) and trace its asyncio tasks, no code change.

    \b
      async-inspect run -- python app.py
      async-inspect run --endpoint http://127.0.0.1:4317 -- python -m myservice
    """
    settings = settings_from_flags(flags)
    reporter = Reporter(bool(flags.get("quiet")))
    return asyncio.run(run_command(list(command), settings, reporter, flags.get("tree")))


async def run_command(
    command: list[str],
    settings: Settings,
    reporter: Reporter,
    tree: bool | None,
    agent_settings: AgentSettings | None = None,
) -> int:
    """Run `command` under a local collector; returns the command's exit status."""
    draw = tree if tree is not None else settings.endpoint is None
    collector = LocalCollector(
        settings, reporter.notice, sys.stderr if draw else None, agent_settings
    )
    address = await collector.start()
    env = launch_environment(os.environ, address, collector.token)
    try:
        process = await asyncio.create_subprocess_exec(*command, env=env)
    except OSError as exc:
        await collector.finish(0)
        raise LaunchError(f"cannot start {command[0]!r}: {exc.strerror}") from None
    loop = asyncio.get_running_loop()
    # Ctrl-C reaches the command from the terminal; we stay to collect its final spans.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, _forward, process, sig)
    watchdog = asyncio.create_task(_warn_if_silent(collector, reporter))
    try:
        status = await process.wait()
    finally:
        watchdog.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    summary = await collector.finish(AGENT_GRACE)
    reporter.summary(summary, settings)
    return status if status >= 0 else 128 - status


def _forward(process: asyncio.subprocess.Process, sig: int) -> None:
    try:
        process.send_signal(sig)
    except ProcessLookupError:
        pass


async def _warn_if_silent(collector: LocalCollector, reporter: Reporter) -> None:
    await asyncio.sleep(NO_AGENT_WARNING)
    if not collector.processes_seen and not reporter.agent_errors:
        reporter.error(
            "no Python process has reported yet: the command must be a Python 3.12+ "
            "interpreter (or start one) and must not ignore PYTHONPATH (-E/-I); "
            "for a running process use `async-inspect attach PID`"
        )
