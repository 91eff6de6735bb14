"""The `async-inspect` command line: one module per command, one `main` for all errors."""

from __future__ import annotations

import importlib
import sys

import click

from profiler.errors import AsyncInspectError

__all__ = ["cli", "main"]

# name -> module of profiler.cli defining it under the same name. Imported when used: the
# daemon's and the views' imports (aiohttp) are not `attach`'s start-up time.
COMMANDS = {
    "run": "run", "attach": "attach", "detach": "detach", "doctor": "doctor",
    "collector": "collector", "ps": "views", "top": "views", "demo": "demo",
}  # fmt: skip


class LazyGroup(click.Group):
    """A group whose commands are imported from their modules when first looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        command = getattr(importlib.import_module(f"{__name__}.{module}"), cmd_name)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option("0.1.0", prog_name="async-inspect")
def cli() -> None:
    """Zero-code asyncio profiler: every task becomes an OpenTelemetry span."""


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
