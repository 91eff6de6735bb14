"""`async-inspect demo`: the product on a bundled example, no service and no app needed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from collector.service import agent_settings_from

from .options import collect_options, settings_from_flags
from .report import Reporter
from .run import run_command

__all__ = ["DEMO_APP", "demo"]

DEMO_APP = Path(__file__).resolve().parent.parent / "examples" / "demo_service.py"


@click.command()
@collect_options
def demo(**flags: Any) -> int:
    """Trace a small bundled asyncio service (handle_request -> auth_user, fetch_data ->
    db_query, render_response) and draw its traces; add --endpoint to export them too."""
    settings = settings_from_flags(flags)
    # The example runs as __main__ from the installed package: trace it as application code,
    # but not its load generator, so each request is drawn as its own trace.
    agent_settings = agent_settings_from(
        settings,
        include=("__main__", *settings.include),
        exclude=("__main__:main", "__main__:client", *settings.exclude),
    )
    reporter = Reporter(bool(flags.get("quiet")))
    command = [sys.executable, str(DEMO_APP)]
    return asyncio.run(run_command(command, settings, reporter, flags.get("tree"), agent_settings))
