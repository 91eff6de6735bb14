"""What every benchmark script records about where and on what it ran, and how it writes JSON."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["command_line", "free_port", "load_note", "source_version", "write_json"]

ROOT = Path(__file__).resolve().parent.parent


def source_version() -> str:
    """The async-inspect commit measured, `+dirty` when the work tree has changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def load_note(own: str = "1-2") -> str:
    """The machine's load averages: well above our own share hints at noisy neighbours."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} (this benchmark alone: {own})"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command_line() -> str:
    """This benchmark's command as the README shows it (`.venv/bin/python -m benchmarks...`)."""
    argv = sys.orig_argv
    if "-m" in argv:
        argv = argv[argv.index("-m") :]
    return " ".join([".venv/bin/python", *argv])


def write_json(path: Path, config: dict[str, Any], document: dict[str, Any]) -> None:
    """`document` plus the configuration (paths as strings, the commit measured) to `path`."""
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in config.items()}
    settings["async_inspect"] = source_version()
    settings["harness_python"] = sys.executable
    settings["command"] = command_line()
    settings["load_average"] = list(os.getloadavg())
    path.write_text(json.dumps({"config": settings, **document}, indent=2) + "\n")
    print(f"\nwrote {path}")
