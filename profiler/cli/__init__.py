"""The `async-inspect` command line: one module per command, one `main` for all errors."""

from __future__ import annotations

import sys

import click

from profiler.errors import AsyncInspectError

from .attach import attach
from .collector import collector
from .demo import demo
from .detach import detach
from .doctor import doctor
from .run import run
from .views import ps, top

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option("0.1.0", prog_name="async-inspect")
def cli() -> None:
    """Zero-code asyncio profiler: every task becomes an OpenTelemetry span."""


for command in (run, attach, detach, doctor, collector, ps, top, demo):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: expected failures become one line and a non-zero exit."""
    try:
        status = cli.main(args=argv, prog_name="async-inspect", standalone_mode=False)
    except AsyncInspectError as exc:
        click.echo(f"async-inspect: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"async-inspect: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo("async-inspect: interrupted", err=True)
        sys.exit(130)
    sys.exit(status if isinstance(status, int) else 0)
