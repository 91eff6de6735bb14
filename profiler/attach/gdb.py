"""Make a running CPython execute a snippet once, through gdb, at a safe point.

The gdb side lives in `_gdb_script.py`. This side resolves the CPython functions it needs (from
`.dynsym`, so stripped interpreters work), starts gdb in its own session (a Ctrl-C on our
terminal must never reach it: gdb would stop the target in the middle of a call), follows its
status lines, and turns them into one result or one `AttachError`.

Killing gdb while it is attached is what can hurt a target: a breakpoint left in
PyEval_SaveThread, or a thread abandoned inside a call, crashes it. So once gdb has attached we
only ever ask it to stop (by closing its abort pipe) and let it detach by itself.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from profiler.attach import elf
from profiler.attach.process import PERMISSION_HINT, TargetInfo, check_ptrace, process_state
from profiler.errors import (
    AttachError,
    AttachTimeout,
    InjectorMissing,
    PermissionDenied,
    ProcessNotFound,
    ProcessStopped,
)

__all__ = ["inject_with_gdb"]

GDB_SCRIPT = Path(__file__).with_name("_gdb_script.py")
# The functions the gdb script uses, with the prototype it casts each address to (so no debug
# information is needed). All of them are exported by every CPython 3.12+ build.
_PROTOTYPES = {
    "Py_IsInitialized": "int (void)", "PyGILState_Check": "int (void)",
    "PyGILState_GetThisThreadState": "void * (void)", "PyGILState_Ensure": "int (void)",
    "PyGILState_Release": "void (int)", "PyErr_Occurred": "void * (void)",
    "PyErr_Clear": "void (void)", "PyDict_New": "void * (void)",
    "PyDict_GetItemString": "void * (void *, void *)", "PyMem_Malloc": "void * (unsigned long)",
    "PyMem_Free": "void (void *)", "PyRun_String": "void * (void *, int, void *, void *)",
    "PyUnicode_AsUTF8": "void * (void *)", "Py_DecRef": "void (void *)",
    "PyEval_SaveThread": "void * (void)",  # a breakpoint, never called
    "PyThread_acquire_lock_timed": "int (void *, long long, int)",  # its range, never called
}  # fmt: skip
_GDB_SETTINGS = [  # given with -iex, so they hold before gdb reads anything
    "set pagination off", "set confirm off", "set width 0", "set height 0",
    "set print thread-events off", "set print inferior-events off", "set breakpoint pending off",
    "set auto-load off", "set auto-solib-add off", "set debuginfod enabled off",
    # gdb always loads libc (as libpthread); reading its separate debug info (libc6-dbg) would
    # keep the target stopped ~100 ms longer. Unwinding needs only .eh_frame, inside libc.
    "set debug-file-directory",
]  # fmt: skip
_GDB_ARGUMENTS = ["-nx", "-batch", "-q", *(f"-iex={s}" for s in _GDB_SETTINGS)]


def _sysroot(target: TargetInfo) -> list[str]:
    # gdb reads the target's files (libc's symbols, its .eh_frame) from the target's own root
    # through /proc/PID/root. Left to itself, gdb would setns() into the target's mount
    # namespace, which needs CAP_SYS_ADMIN: a DaemonSet has only SYS_PTRACE and friends.
    return [f"-iex=set sysroot {target.root}"]


_ERROR_NAME = "__async_inspect_error__"  # must match ERROR_NAME in _gdb_script.py
_GRACE = 10.0  # seconds past the deadline for gdb to finish a call in progress and detach
_ABORT_WAIT = 5.0  # seconds to wait for gdb to detach after we asked it to stop


def inject_with_gdb(target: TargetInfo, code: str, *, timeout: float = 5.0) -> str:
    """Run the Python source `code` once inside `target`, at a safe point; return how (for logs).

    `code` runs in a fresh namespace (nothing is added to `__main__`) and must return quickly:
    start real work on a daemon thread. An exception it raises never reaches the target; it is
    raised here as AttachError. `timeout` bounds the wait for a safe point. Raises
    InjectorMissing, PermissionDenied, ProcessNotFound, ProcessStopped, AttachTimeout, AttachError.
    KeyboardInterrupt is re-raised once gdb has detached (or is detaching by itself).
    """
    gdb = shutil.which("gdb")
    if gdb is None:
        raise InjectorMissing(
            "gdb is not installed (or not on PATH)",
            hint="install gdb (apt-get install gdb), or run the target on Python 3.14+",
        )
    if process_state(target.pid) == "T":
        raise ProcessStopped(
            f"PID {target.pid} is stopped (SIGSTOP or job control)",
            hint=f"resume it with `kill -CONT {target.pid}` and try again",
        )
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="async-inspect-") as tmp:
        (status_r, status_w), (abort_r, abort_w) = os.pipe(), os.pipe()
        session = _Session(status_r, abort_w)
        try:
            try:
                plan = _plan(target, code, deadline, status_fd=status_w, abort_fd=abort_r)
                Path(tmp, "plan.json").write_text(json.dumps(plan))  # private: tmp is 0700
                with open(Path(tmp, "gdb.log"), "wb") as log:
                    session.proc = subprocess.Popen(
                        [gdb, *_GDB_ARGUMENTS, *_sysroot(target), "-x", str(GDB_SCRIPT)],
                        env=_gdb_environment(Path(tmp, "plan.json")),
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        pass_fds=(status_w, abort_r),
                        start_new_session=True,
                    )
            finally:
                os.close(status_w)  # gdb has its own copies now
                os.close(abort_r)
            session.follow(deadline + _GRACE)
        finally:
            session.close()
        return session.outcome(target, timeout, Path(tmp, "gdb.log").read_text(errors="replace"))


def _plan(target: TargetInfo, code: str, deadline: float, **fds: int) -> dict[str, object]:
    """Everything the gdb script needs; addresses are absolute in the target's memory."""
    try:
        symbols = elf.dynamic_symbols(target.python_module, _PROTOTYPES)
    except (OSError, elf.ElfError) as exc:
        hint = "check that the file is readable"
        raise AttachError(f"cannot read {target.python_module}: {exc}", hint=hint) from None
    missing = sorted(set(_PROTOTYPES) - set(symbols))
    if missing:
        raise AttachError(
            f"{target.python_module} does not export {', '.join(missing)}",
            hint="async-inspect needs a standard CPython build",
        )
    bias = target.module_load_bias
    functions = {name: (bias + s.value, _PROTOTYPES[name]) for name, s in symbols.items()}
    lock = functions["PyThread_acquire_lock_timed"][0]
    # Its first bytes in memory must match the file: else the PID exec'd or was reused since.
    probe = elf.read_at_vaddr(target.python_module, symbols["PyGILState_Ensure"].value, 16)
    return {
        "expect": [functions["PyGILState_Ensure"][0], probe.hex()],
        "pid": target.pid,
        "deadline": deadline,
        "functions": functions,
        "lock_wait": [lock, lock + symbols["PyThread_acquire_lock_timed"].size],
        # Only libc's frames are walked (its unwind tables suffice): the first return address
        # outside libc must be in PyThread_acquire_lock_timed. libc also has __errno_location.
        "libc": r"libc\.so|libpthread\.so|ld-musl",
        "source": _bootstrap(code),
        **fds,
    }


def _bootstrap(code: str) -> str:
    """Wrap `code` so that no exception (SystemExit included) can leave it.

    It is run with PyRun_String in a fresh dict, so nothing lands in `__main__`. `ascii()`
    turns the source into a pure-ASCII literal: no quoting or encoding can break it.
    """
    return (
        "try:\n"
        f"    exec(compile({code!a}, '<async-inspect>', 'exec'),"
        " {'__name__': '__async_inspect__'})\n"
        "except BaseException as exc:\n"
        "    try:\n"
        f"        {_ERROR_NAME} = f'{{type(exc).__name__}}: {{exc}}'\n"
        "    except BaseException:\n"
        f"        {_ERROR_NAME} = type(exc).__name__\n"
    )


def _gdb_environment(plan_path: Path) -> dict[str, str]:
    # Our PYTHON* settings would break gdb's embedded Python; C locale keeps its messages stable.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DEBUGINFOD"))}
    env.update(LC_ALL="C", ASYNC_INSPECT_GDB_PLAN=str(plan_path))
    return env


class _Session:
    """Follows one gdb run through the status lines its script writes."""

    proc: subprocess.Popen[bytes]

    def __init__(self, status_fd: int, abort_fd: int) -> None:
        self.status_fd, self.abort_fd = status_fd, abort_fd
        self.attached = self.detached = self.aborted = False
        self.method = self.inside = ""  # `inside`: the CPython function gdb is calling now
        self.error: tuple[str, str] | None = None
        self.stats: list[int] = []
        self._pending = b""

    def follow(self, hard_deadline: float) -> None:
        """Wait for gdb to finish; on Ctrl-C or overtime, ask it to stop and detach."""
        try:
            if self._pump(hard_deadline):
                return
            self.abort()
            self._pump(time.monotonic() + _ABORT_WAIT)
        except KeyboardInterrupt:
            self.abort()
            try:
                self._pump(time.monotonic() + _ABORT_WAIT)
            finally:
                self._kill_if_safe()
            raise
        self._kill_if_safe()

    def abort(self) -> None:
        if not self.aborted:
            self.aborted = True
            os.close(self.abort_fd)  # end of file on gdb's side: its watchdog stops the wait

    def close(self) -> None:
        """Release our pipe ends; closing the abort pipe also tells a lingering gdb to stop."""
        self.abort()
        os.close(self.status_fd)

    def _kill_if_safe(self) -> None:
        # Before attach, or after detach, a kill cannot hurt the target. In between, gdb is
        # left to finish on its own: it holds no terminal and exits once the abort pipe closed.
        if self.proc.poll() is None and (not self.attached or self.detached):
            self.proc.kill()
            self.proc.wait()

    def _pump(self, until: float) -> bool:
        """Read status lines until gdb exits (True) or `until` passes (False)."""
        eof = False
        while self.proc.poll() is None:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return False
            if eof:
                time.sleep(min(remaining, 0.02))
                continue
            if select.select([self.status_fd], [], [], min(remaining, 0.1))[0]:
                data = os.read(self.status_fd, 65536)
                eof = not data
                self._feed(data)
        while select.select([self.status_fd], [], [], 0)[0] and (
            data := os.read(self.status_fd, 65536)
        ):
            self._feed(data)
        return True

    def _feed(self, data: bytes) -> None:
        *lines, self._pending = (self._pending + data).split(b"\n")
        for raw in lines:
            word, _, rest = raw.decode(errors="replace").partition(" ")
            if word == "attached":
                self.attached = True
            elif word in ("call", "back"):
                self.inside = rest if word == "call" else ""
            elif word == "method":
                self.method = rest
            elif word == "error":
                kind, _, message = rest.partition(" ")
                self.error = (kind, message)
            elif word == "detached":
                self.detached = True
                self.stats = [int(n) for n in rest.split()]

    def outcome(self, target: TargetInfo, timeout: float, log: str) -> str:
        """The method used, or the AttachError that describes what went wrong."""
        pid = target.pid
        if self.stats and len(re.findall(r"received signal SIGINT", log)) > self.stats[2]:
            os.kill(pid, signal.SIGINT)  # a Ctrl-C meant for the target arrived meanwhile
        if self.proc.poll() is None:
            where = f", inside {self.inside}()" if self.inside else ""
            raise AttachTimeout(
                f"gdb (PID {self.proc.pid}) is still attached to PID {pid}{where}",
                hint="it detaches by itself once that returns; killing it could crash the target",
            )
        if self.method and self.error is None:
            stopped = f" (target stopped {self.stats[1]} ms)" if self.stats else ""
            return self.method + stopped
        kind, message = self.error or ("", "")
        if kind == "attach":
            if "No such process" in message:
                raise ProcessNotFound(f"PID {pid} exited", hint="check the PID with `ps`")
            if "not permitted" in message:
                problems = "; ".join(check_ptrace(pid).problems)
                raise PermissionDenied(
                    f"ptrace refused attaching to PID {pid}"
                    + (f": {problems}" if problems else ""),
                    hint=PERMISSION_HINT,
                )
        if kind == "aborted":
            raise AttachTimeout(f"gave up attaching to PID {pid}", hint="nothing was injected")
        if kind == "timeout":
            raise AttachTimeout(
                f"PID {pid} reached no safe point within {timeout:g}s",
                hint="no thread blocked in a syscall or released the GIL (a pure-Python CPU "
                "loop?); retry when the program does I/O or sleeps, or with a longer timeout",
            )
        if kind in ("gone", "changed") or not os.path.isdir(f"/proc/{pid}"):
            raise ProcessNotFound(f"PID {pid} {message or 'exited'}", hint="inspect the PID again")
        if kind == "bootstrap":
            raise AttachError(
                f"the injected code raised inside PID {pid}: {message}",
                hint="the target is unharmed; fix the injected code",
            )
        if "Python scripting is not supported" in log:
            raise InjectorMissing(
                "this gdb has no Python support", hint="install the full `gdb` package"
            )
        detail = message or " / ".join(log.strip().splitlines()[-3:]) or "no output"
        raise AttachError(f"gdb could not inject into PID {pid}: {detail}", hint="see gdb's output")
