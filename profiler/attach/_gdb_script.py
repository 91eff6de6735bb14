"""Runs inside gdb's embedded Python: wait for a safe point in the target and run a snippet there.

`profiler.attach.gdb` starts `gdb -nx -batch -x <this file>` with ASYNC_INSPECT_GDB_PLAN naming a
JSON plan: the PID, absolute addresses of exported CPython functions, a monotonic deadline, the
source to run, a status pipe (we write one line per step) and an abort pipe (end of file = stop).

A thread stopped at an arbitrary instruction may be inside a dict resize or hold malloc's lock,
so Python is only ever run at one of two safe points, best first:

1. a thread parked in a blocking syscall (epoll_wait, poll, select, a sleep, or a futex wait of
   PyThread_acquire_lock_timed) with a thread state but without the GIL. CPython itself takes
   the GIL there after EINTR and runs signal handlers (PEP 475): PyGILState_Ensure, run, release.
2. a thread entering PyEval_SaveThread: it holds the GIL and is about to release it, so the
   interpreter is between operations. Every busy event loop gets there once per iteration.

Only exported functions are called, through casts, so stripped interpreters work. This file must
run on whatever Python gdb embeds (3.7+): standard library only, nothing from `profiler`.
"""

from __future__ import annotations

import json
import os
import select
import threading
import time
from typing import Any

import gdb  # type: ignore[import-not-found]  # only exists inside gdb

PY_FILE_INPUT = 257  # Include/compile.h: the start symbol for a module's statements
ERROR_NAME = b"__async_inspect_error__"  # the bootstrap stores its exception text here
SYSCALL_INSTRUCTION = b"\x0f\x05"
SYS_FUTEX = 202
# x86-64 syscalls that park a thread inside Py_BEGIN/END_ALLOW_THREADS with nothing else held.
PARKING_SYSCALLS = {
    0: "read", 7: "poll", 23: "select", 35: "nanosleep", 43: "accept", 45: "recvfrom",
    47: "recvmsg", 61: "wait4", 230: "clock_nanosleep", 232: "epoll_wait", 247: "waitid",
    270: "pselect6", 271: "ppoll", 281: "epoll_pwait", 288: "accept4", 441: "epoll_pwait2",
}  # fmt: skip
SIGNATURES = {  # name: (return type, parameter types)
    "Py_IsInitialized": ("int", ()),
    "PyGILState_Check": ("int", ()),
    "PyGILState_GetThisThreadState": ("void *", ()),
    "PyGILState_Ensure": ("int", ()),
    "PyGILState_Release": ("void", ("int",)),
    "PyErr_Occurred": ("void *", ()),
    "PyErr_Clear": ("void", ()),
    "PyDict_New": ("void *", ()),
    "PyDict_GetItemString": ("void *", ("void *", "void *")),
    "PyMem_Malloc": ("void *", ("unsigned long",)),
    "PyMem_Free": ("void", ("void *",)),
    "PyRun_String": ("void *", ("void *", "int", "void *", "void *")),
    "PyUnicode_AsUTF8": ("void *", ("void *",)),
    "Py_DecRef": ("void", ("void *",)),
}
SETUP = [
    "set pagination off", "set confirm off", "set width 0", "set height 0",
    "set print thread-events off", "set print inferior-events off",
    "set auto-load off", "set auto-solib-add off", "set debuginfod enabled off",
    "set breakpoint pending off",
    # A fault inside one of our calls must not kill the target: gdb restores the registers.
    "set unwindonsignal on",
    # The target's own signals pass through untouched, except faults (see above) and SIGINT,
    # which gdb uses itself: it is toggled around `continue` (see wait_for_save_thread).
    "handle all nostop noprint pass",
    "handle SIGSEGV SIGBUS SIGILL SIGFPE SIGABRT stop print pass",
    "handle SIGINT nostop print nopass",
]  # fmt: skip


class Refused(Exception):
    """Stop here and report `kind` (a word the host maps to an error class) and a message."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Channel:
    """Status lines to the host; the host never kills gdb between "call" and "back"."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, *words: object) -> None:
        try:
            os.write(self.fd, (" ".join(map(str, words)) + "\n").encode())
        except OSError:
            pass  # the host is gone: keep going, we still have to detach cleanly


class Watchdog(threading.Thread):
    """At the deadline, or when the host closes the abort pipe, interrupt a waiting `continue`."""

    def __init__(self, abort_fd: int, deadline: float) -> None:
        super().__init__(name="async-inspect-watchdog", daemon=True)
        self.abort_fd, self.deadline = abort_fd, deadline
        self.fired = self.waiting = self.interrupted = False
        self.reason = ""

    def run(self) -> None:
        remaining = max(0.0, self.deadline - time.monotonic())
        ready, _, _ = select.select([self.abort_fd], [], [], remaining)
        self.reason = "aborted" if ready else "timeout"
        self.fired = True
        gdb.post_event(self._interrupt)

    def _interrupt(self) -> None:
        # Runs on gdb's main thread, so `waiting` cannot change under us. Only `continue` is
        # interrupted: stopping an inferior call would abandon CPython half-way through it.
        if self.waiting:
            self.interrupted = True
            gdb.execute("interrupt")

    def check(self) -> None:
        if self.fired:
            raise Refused(self.reason, "no safe point was reached in time")


class Target:
    """The attached process: typed calls of exported CPython functions on the selected thread."""

    def __init__(self, plan: dict[str, Any], channel: Channel, watchdog: Watchdog) -> None:
        self.plan, self.channel, self.watchdog = plan, channel, watchdog
        self.addresses: dict[str, int] = plan["functions"]
        missing = sorted(set(SIGNATURES) - set(self.addresses))
        if missing:
            raise Refused("internal", "missing CPython symbols: " + ", ".join(missing))
        self.inferior = gdb.selected_inferior()
        self.libraries_loaded = False
        self.running = 0.0  # seconds the target ran freely under `continue`

    def call(self, name: str, *args: int) -> int:
        restype, params = SIGNATURES[name]
        function = "((%s (*)(%s))%#x)" % (restype, ", ".join(params) or "void", self.addresses[name])
        expression = "%s(%s)" % (function, ", ".join("(%s) %d" % p for p in zip(params, args)))
        if restype == "void *":
            expression = "(unsigned long) " + expression  # so that int() accepts the value
        self.channel.send("call", name)
        value = gdb.parse_and_eval(expression)
        self.channel.send("back", name)
        return 0 if restype == "void" else int(value)

    def run_source(self) -> str:
        """With the GIL held: run the bootstrap in a fresh dict; return its error text or ""."""
        data = self.plan["source"].encode() + b"\0" + ERROR_NAME + b"\0"
        namespace = self.call("PyDict_New")
        buffer = self.call("PyMem_Malloc", len(data)) if namespace else 0
        try:
            if not buffer:
                return "out of memory"
            self.inferior.write_memory(buffer, data)
            result = self.call("PyRun_String", buffer, PY_FILE_INPUT, namespace, namespace)
            if not result:
                return "the bootstrap failed before it could catch its own error"
            self.call("Py_DecRef", result)
            key = buffer + len(self.plan["source"].encode()) + 1
            error = self.call("PyDict_GetItemString", namespace, key)
            text = self.call("PyUnicode_AsUTF8", error) if error else 0
            if not text:
                return ""
            char_p = gdb.lookup_type("char").pointer()
            return str(gdb.Value(text).cast(char_p).string(errors="replace", length=-1))[:500]
        finally:
            if namespace:
                self.call("Py_DecRef", namespace)
            if buffer:
                self.call("PyMem_Free", buffer)
            self.call("PyErr_Clear")  # none was set before us (checked); leave none behind

    def parked_threads(self) -> list[tuple[Any, str]]:
        """Threads stopped right after a blocking syscall instruction, best candidates first."""
        parked, futex = [], []
        if "x86-64" not in gdb.newest_frame().architecture().name():
            return []  # syscall numbers differ elsewhere: rely on PyEval_SaveThread only
        for thread in self.inferior.threads():
            thread.switch()
            frame = gdb.newest_frame()
            try:
                number = int(frame.read_register("orig_rax"))
                instruction = bytes(self.inferior.read_memory(frame.pc() - 2, 2))
            except (gdb.error, gdb.MemoryError):
                continue
            if instruction != SYSCALL_INSTRUCTION:
                continue
            if number in PARKING_SYSCALLS:
                parked.append((thread, PARKING_SYSCALLS[number]))
            elif number == SYS_FUTEX:
                futex.append(thread)
        return parked + [(t, "futex (lock acquire)") for t in futex if self.waits_for_lock(t)]

    def waits_for_lock(self, thread: Any) -> bool:
        """True if the futex wait comes straight from PyThread_acquire_lock_timed through libc.

        A futex wait elsewhere may be malloc's arena lock, the GIL itself, or (3.13+) the
        parking lot, whose per-thread state must not be re-entered: none of those is safe.
        """
        if not self.libraries_loaded:  # gdb needs their unwind tables to walk the stack
            gdb.execute("sharedlibrary " + self.plan["unwind_libraries"], to_string=True)
            self.libraries_loaded = True
        low, high = self.plan["lock_wait"]
        thread.switch()
        frame = gdb.newest_frame()
        for _ in range(16):
            pc = frame.pc()
            if low < pc <= high:  # a return address points just after the call instruction
                return True
            library = os.path.basename(gdb.solib_name(pc) or "")
            if not library.startswith(("libc.so", "libpthread.so")):
                return False
            frame = frame.older()
            if frame is None:
                return False
        return False

    def inject_into_parked(self, thread: Any) -> bool:
        """Take the GIL on a parked thread, run the bootstrap, give the GIL back."""
        thread.switch()
        if self.call("Py_IsInitialized") != 1:
            raise Refused("not-running", "the interpreter is starting up or shutting down")
        if not self.call("PyGILState_GetThisThreadState") or self.call("PyGILState_Check"):
            return False  # not a Python thread, or it holds the GIL (so it is not parked)
        state = self.call("PyGILState_Ensure")
        try:
            self.watchdog.check()
            if self.call("PyErr_Occurred"):
                return False
            self.report(self.run_source())
        finally:
            self.call("PyGILState_Release", state)
        return True

    def wait_for_save_thread(self) -> Any:
        """Let the target run until a thread holding the GIL enters PyEval_SaveThread."""
        address = self.addresses["PyEval_SaveThread"]
        while True:
            self.watchdog.check()
            breakpoint = gdb.Breakpoint("*%#x" % address, internal=True)
            breakpoint.silent = True
            gdb.execute("handle SIGINT stop print nopass", to_string=True)
            self.watchdog.waiting = True
            resumed = time.monotonic()
            try:
                gdb.execute("continue", to_string=True)
            finally:
                self.watchdog.waiting = False
                self.running += time.monotonic() - resumed
                gdb.execute("handle SIGINT nostop print nopass", to_string=True)
                breakpoint.delete()  # before any call: our own code calls PyEval_SaveThread
            if not self.inferior.pid:
                raise Refused("gone", "the process exited")
            if self.watchdog.interrupted:
                raise Refused(self.watchdog.reason, "no safe point was reached in time")
            thread = gdb.selected_thread()
            if gdb.newest_frame().pc() != address:
                # A SIGINT meant for the target (the host re-sends it after we detach), or a
                # fault, which `continue` passes on: the target crashes as it would have anyway.
                continue
            if (
                self.call("Py_IsInitialized") == 1
                and self.call("PyGILState_Check") == 1
                and not self.call("PyErr_Occurred")
            ):
                return thread

    def report(self, error: str) -> None:
        if error:
            raise Refused("bootstrap", error)


def inject(target: Target) -> str:
    """Run the bootstrap at the first safe point; return how (for the host's log)."""
    for thread, syscall in target.parked_threads():
        target.watchdog.check()
        if target.inject_into_parked(thread):
            return "gdb: thread %d parked in %s" % (thread.ptid[1], syscall)
    thread = target.wait_for_save_thread()
    target.report(target.run_source())
    return "gdb: thread %d entering PyEval_SaveThread" % thread.ptid[1]


def main() -> None:
    with open(os.environ["ASYNC_INSPECT_GDB_PLAN"]) as f:
        plan = json.load(f)
    for fd in (plan["status_fd"], plan["abort_fd"]):
        os.set_inheritable(fd, False)  # keep them out of helpers gdb may fork
    channel = Channel(plan["status_fd"])
    watchdog = Watchdog(plan["abort_fd"], plan["deadline"])
    watchdog.start()
    for command in SETUP:
        gdb.execute(command, to_string=True)
    started = time.monotonic()
    try:
        gdb.execute("attach %d" % plan["pid"], to_string=True)
    except gdb.error as exc:
        channel.send("error", "attach", str(exc))
        return
    channel.send("attached")
    # Every thread runs during our calls: the one holding the GIL must be free to release it.
    gdb.execute("set scheduler-locking off", to_string=True)
    target = None
    try:
        target = Target(plan, channel, watchdog)
        channel.send("method", inject(target))
    except Refused as exc:
        channel.send("error", exc.kind, str(exc))
    except Exception as exc:  # gdb.error from a call, a memory error: report, then detach
        channel.send("error", "internal", "%s: %s" % (type(exc).__name__, exc))
    finally:
        try:
            if gdb.selected_inferior().pid:
                gdb.execute("detach", to_string=True)
        finally:
            elapsed = time.monotonic() - started
            stopped = elapsed - (target.running if target else 0.0)
            # The host counts gdb's "received signal SIGINT" lines minus our own interrupt.
            channel.send("detached", int(elapsed * 1000), int(stopped * 1000), int(watchdog.interrupted))


if __name__ == "__main__":
    main()
