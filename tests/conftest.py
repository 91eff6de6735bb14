"""Shared fixtures: interpreters to run targets with, a real OTLP receiver, process hygiene."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.otlp_receiver import OtlpReceiver

# A suite started in the background by a shell inherits SIGINT ignored, and so would every
# process it starts: the tests' Ctrl-C (SIGINT to an attach or run session) would reach
# nothing. With a handler here, each child starts with the default disposition instead.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parent.parent
TARGETS = Path(__file__).resolve().parent / "targets"
CLI = [sys.executable, "-m", "profiler"]


def _find_interpreters() -> dict[str, str]:
    """CPython 3.12, 3.13 and 3.14 executables on this machine (env override first)."""
    found: dict[str, str] = {}
    override = os.environ.get("ASYNC_INSPECT_TEST_PYTHONS")
    candidates = override.split(os.pathsep) if override else []
    for version in ("3.12", "3.13", "3.14"):
        candidates += [
            *sorted(str(p) for p in Path("/root/.pyenv/versions").glob(f"{version}*/bin/python")),
            f"/opt/python{version}/usr/bin/python{version}",
            shutil.which(f"python{version}") or "",
        ]
    for path in candidates:
        if not path or not os.access(path, os.X_OK):
            continue
        try:
            out = subprocess.run(
                [path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        found.setdefault(out, path)
    return found


INTERPRETERS = _find_interpreters()
_COPIES = Path("/var/tmp") / f"async-inspect-test-targets-{os.getpid()}"


def outside_tmp(path: Path) -> Path:
    """`path`, or a copy of it outside /tmp if it lies there: a namespaced target ("a
    container") gets a private tmpfs on /tmp, which would hide a checkout under /tmp."""
    if not str(path.resolve()).startswith("/tmp/"):
        return path
    if not _COPIES.exists():
        _COPIES.mkdir(parents=True)
        atexit.register(shutil.rmtree, _COPIES, True)
    copy = _COPIES / path.name
    shutil.copy2(path, copy)
    return copy


TARGET_VERSIONS = [v for v in ("3.12", "3.13", "3.14") if v in INTERPRETERS]


def interpreter_params() -> list[object]:
    """pytest params over 3.12/3.13/3.14; a missing one is skipped with its reason."""
    params: list[object] = []
    for version in ("3.12", "3.13", "3.14"):
        marks = []
        if version not in INTERPRETERS:
            marks.append(pytest.mark.skip(reason=f"no CPython {version} on this machine"))
        params.append(pytest.param(version, id=f"py{version}", marks=marks))
    return params


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Every test must leave no child process behind."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    leftovers = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    leftovers = [p for p in leftovers if _running(p)]
    for process in leftovers:
        process.kill()
    assert not leftovers, f"test left processes running: {[p.cmdline() for p in leftovers]}"


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
