"""The registry of live attach sessions, so `detach PID` from another shell finds the CLI
that owns the agent in PID and asks it to detach (which flushes everything it captured)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import psutil

__all__ = ["forget_session", "owner_of", "record_session", "sessions_dir"]


def sessions_dir() -> Path:
    """/run/async-inspect for root, else a per-user folder in the temp dir."""
    if os.geteuid() == 0 and os.access("/run", os.W_OK):
        return Path("/run/async-inspect")
    return Path(tempfile.gettempdir()) / f"async-inspect-{os.geteuid()}"


def record_session(pid: int) -> Path:
    """Note that this process owns the agent in `pid`."""
    folder = sessions_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{pid}.json"
    created = psutil.Process().create_time()
    path.write_text(json.dumps({"owner": os.getpid(), "created": created, "pid": pid}))
    return path


def forget_session(pid: int) -> None:
    """Remove our record for `pid` (only if it is ours)."""
    path = sessions_dir() / f"{pid}.json"
    try:
        if json.loads(path.read_text()).get("owner") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def owner_of(pid: int) -> int | None:
    """PID of the live async-inspect process attached to `pid`, if any."""
    path = sessions_dir() / f"{pid}.json"
    try:
        record = json.loads(path.read_text())
        owner, created = int(record["owner"]), float(record["created"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        # The creation time tells our process from another that reused its PID.
        if psutil.Process(owner).create_time() == created:
            return owner
    except psutil.Error:
        pass
    return None
