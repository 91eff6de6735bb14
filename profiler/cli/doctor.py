"""`async-inspect doctor [PID]`: can this machine (and this PID) be attached to? What is missing?"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

import click

from profiler.attach.process import check_ptrace, inspect_process
from profiler.attach.rendezvous import prepare_rendezvous
from profiler.attach.sessions import owner_of
from profiler.errors import AsyncInspectError

__all__ = ["doctor"]


class _Checks:
    def __init__(self) -> None:
        self.failed = 0

    def ok(self, what: str) -> None:
        click.echo(f"  ok    {what}")

    def warn(self, what: str) -> None:
        click.echo(f"  warn  {what}")

    def fail(self, what: str) -> None:
        self.failed += 1
        click.echo(f"  FAIL  {what}")


@click.command()
@click.argument("pid", type=int, required=False)
def doctor(pid: int | None) -> int:
    """Check everything attach needs, for this machine and optionally for PID."""
    checks = _Checks()
    click.echo("this machine:")
    _machine(checks)
    if pid is not None:
        click.echo(f"PID {pid}:")
        _target(checks, pid)
    click.echo("attach should work" if not checks.failed else f"{checks.failed} problem(s) found")
    return 0 if not checks.failed else 1


def _machine(checks: _Checks) -> None:
    gdb = shutil.which("gdb")
    if gdb is None:
        checks.warn("gdb not found: Python 3.12/3.13 targets cannot be attached "
                    "(apt-get install gdb); 3.14+ targets use remote execution")  # fmt: skip
    else:
        version = subprocess.run([gdb, "--version"], capture_output=True, text=True, timeout=10)
        checks.ok(f"gdb: {gdb} ({version.stdout.splitlines()[0] if version.stdout else '?'})")
    access = check_ptrace(os.getpid())
    scope = access.ptrace_scope
    if os.geteuid() == 0 or access.has_cap_sys_ptrace:
        checks.ok("privileges: " + ("root" if os.geteuid() == 0 else "CAP_SYS_PTRACE"))
    else:
        checks.warn("not root and no CAP_SYS_PTRACE: only processes of your own user can be "
                    "attached, and only if kernel.yama.ptrace_scope is 0")  # fmt: skip
    if scope == 3:
        checks.fail("kernel.yama.ptrace_scope=3: ptrace is disabled until reboot")
    elif scope is not None:
        checks.ok(f"kernel.yama.ptrace_scope={scope}")
    release = tuple(int(p) for p in platform.release().split(".")[:2] if p.isdigit())
    if release < (5, 6):
        checks.warn(f"kernel {platform.release()}: idle 3.14 targets need gdb (pidfd_getfd: 5.6+)")


def _target(checks: _Checks, pid: int) -> None:
    try:
        target = inspect_process(pid, allow_stopped=True)
    except AsyncInspectError as exc:
        checks.fail(str(exc))
        return
    checks.ok(f"CPython {target.version_str} ({target.exe})")
    if target.stopped:
        checks.fail(f"stopped (SIGSTOP or job control): resume it with `kill -CONT {pid}`")
    for problem in check_ptrace(pid).problems:
        checks.fail(problem)
    if target.version >= (3, 14):
        if target.remote_debug_disabled:
            checks.warn("remote debugging disabled in the target: gdb will be used instead")
        else:
            checks.ok("PEP 768 remote execution available")
    elif shutil.which("gdb") is None:
        checks.fail(f"Python {target.version_str} needs gdb to attach: apt-get install gdb")
    if target.other_mount_ns:
        checks.ok(f"in another mount namespace (container): reached through {target.root}")
    try:
        prepare_rendezvous(target).remove()
        checks.ok("a writable folder for the socket exists in the target's file system")
    except AsyncInspectError as exc:
        checks.fail(str(exc))
    owner = owner_of(pid)
    if owner is not None:
        checks.warn(f"already attached by async-inspect PID {owner}")
