"""`async-inspect detach PID`: end the attach session on PID from another shell."""

from __future__ import annotations

import os
import signal
import time

import click
import psutil

from profiler.attach.sessions import owner_of
from profiler.errors import AttachError, ProcessNotFound

__all__ = ["detach"]


@click.command()
@click.argument("pid", type=int)
@click.option("--timeout", type=float, default=15.0, show_default=True, metavar="SECONDS")
def detach(pid: int, timeout: float) -> int:
    """Detach async-inspect from PID: the attach session flushes what it captured and removes
    every hook from the process."""
    if not psutil.pid_exists(pid):
        raise ProcessNotFound(f"no process with PID {pid}", "check the PID with `ps`")
    owner = owner_of(pid)
    if owner is None:
        raise AttachError(
            f"no async-inspect session is attached to PID {pid}",
            "an agent whose session died detaches by itself within 10 seconds",
        )
    os.kill(owner, signal.SIGTERM)  # the session detaches as on Ctrl-C
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if owner_of(pid) != owner:
            click.echo(f"async-inspect: detached from PID {pid}", err=True)
            return 0
        time.sleep(0.1)
    raise AttachError(
        f"the session (PID {owner}) attached to PID {pid} did not finish in {timeout:.0f}s",
        f"it may still be flushing; check with `ps -p {owner}`",
    )
