"""What every benchmark script's `main` shares: the options that say how processes run and
where results go, and one measurement run with every child torn down whatever happens."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .environment import load_note
from .procs import BenchError, Children, clean_environment

__all__ = ["add_placement_options", "add_run_options", "run_children"]


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """--nice, --json and --logs, as every script takes them."""
    parser.add_argument(
        "--nice", type=int, default=0, help="niceness of every process started (e.g. -10, root)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE")
    parser.add_argument("--logs", type=Path, help="keep every process's stderr in this folder")


def add_placement_options(parser: argparse.ArgumentParser, apps: str, collector: str) -> None:
    """--python, --target-cpu and --collector-cpu (-1: any CPU, read back as None) for the
    scripts that run `apps` beside an async-inspect `collector` (the CLI or the daemon)."""
    parser.add_argument("--python", default=sys.executable, help=f"interpreter of the {apps}")
    parser.add_argument("--target-cpu", type=int, default=0, help=f"CPU of the {apps} (0)")
    parser.add_argument(
        "--collector-cpu",
        type=lambda text: None if int(text) < 0 else int(text),
        default=1,
        help=f"CPU of the {collector} (1; -1: any)",
    )


def run_children(
    args: argparse.Namespace,
    name: str,
    body: Callable[[Children, Path], None],
    banner: str = "",
    own_load: str = "1-2",
) -> int | None:
    """Run `body(children, logs)`; every process it started is stopped on the way out, also
    on Ctrl-C or SIGTERM. None when it ran through, else the exit code: 1 when a BenchError
    aborted it, 130 when interrupted. The logs folder is temporary unless --logs names one."""
    logs = args.logs or Path(tempfile.mkdtemp(prefix=f"async-inspect-{name}-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(f"{banner}before: {load_note(own_load)}", file=sys.stderr, flush=True)
    try:
        with Children(logs, clean_environment(), args.nice).scope() as children:
            body(children, logs)
    except BenchError as exc:
        print(f"benchmark aborted: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; every process stopped", file=sys.stderr)
        return 130
    finally:
        if args.logs is None:
            shutil.rmtree(logs, ignore_errors=True)
    return None
