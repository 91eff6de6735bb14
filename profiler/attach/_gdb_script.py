"""Runs inside gdb's embedded Python: wait for a safe point in the target and run a snippet there.

`profiler.attach.gdb` starts `gdb -nx -batch -x <this file>` with ASYNC_INSPECT_GDB_PLAN naming a
JSON plan: PID, addresses of exported CPython functions, deadline, source, a status pipe (one
line per step) and an abort pipe (end of file means stop). A thread stopped at an arbitrary
instruction may be inside a dict resize or hold malloc's lock, so Python only ever runs at:

1. a thread parked in a blocking syscall (epoll_wait, poll, select, a sleep, or a futex wait of
   PyThread_acquire_lock_timed) with a thread state but without the GIL. CPython itself takes
   the GIL there after EINTR and runs signal handlers (PEP 475): PyGILState_Ensure, run, release.
2. a thread entering PyEval_SaveThread: it holds the GIL and is about to release it, so the
   interpreter is between operations. Every busy event loop gets there once per iteration.

Only exported functions are called, through casts, so stripped interpreters work. Runs on the
Python that gdb embeds (3.7+): standard library only, nothing from `profiler`.
"""

from __future__ import annotations

import json
import os
import select
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import gdb  # type: ignore[import-untyped, unused-ignore]  # exists only inside gdb

PY_FILE_INPUT = 257  # Include/compile.h: the start symbol for a module's statements
ERROR_NAME = b"__async_inspect_error__"  # the bootstrap stores its exception text there
SYSCALL_INSTRUCTION, SYS_FUTEX = b"\x0f\x05", 202
# x86-64 syscalls that park a thread inside Py_BEGIN/END_ALLOW_THREADS with nothing else held.
PARKING_SYSCALLS = {
    0: "read", 7: "poll", 23: "select", 35: "nanosleep", 43: "accept", 45: "recvfrom",
    47: "recvmsg", 61: "wait4", 230: "clock_nanosleep", 232: "epoll_wait", 247: "waitid",
    270: "pselect6", 271: "ppoll", 281: "epoll_pwait", 288: "accept4", 441: "epoll_pwait2",
}  # fmt: skip
SETUP = [  # after the host's -iex settings (quiet, no symbol loading beyond what we need)
    # A fault inside one of our calls must not kill the target: gdb restores the registers.
    "set unwindonsignal on",
    # The target's signals pass through, except faults (above) and SIGINT, which gdb's interrupt
    # uses: it stops only while we `continue`, so a Ctrl-C cannot abandon a call half-way.
    "handle all nostop noprint pass",
    "handle SIGSEGV SIGBUS SIGILL SIGFPE SIGABRT stop print pass",
    "handle SIGINT nostop print nopass",
]  # fmt: skip


def report(fd: int, *words: object) -> None:
    """One status line for the host ("call"/"back" show when we are inside the target)."""
    line = " ".join(str(word).replace("\n", " / ") for word in words)
    with suppress(OSError):  # the host is gone: carry on, we still have to detach cleanly
        os.write(fd, (line + "\n").encode())


class Refused(Exception):
    """Stop here and report `kind` (a word the host maps to an error class) and a message."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Watchdog(threading.Thread):
    """At the deadline, or when the host closes the abort pipe, interrupt a waiting `continue`."""

    def __init__(self, abort_fd: int, deadline: float) -> None:
        super().__init__(name="async-inspect-watchdog", daemon=True)
        self.abort_fd, self.deadline, self.reason = abort_fd, deadline, ""
        self.running = 0.0  # seconds the target ran freely under our `continue`
        self.fired = self.waiting = self.interrupted = False

    def run(self) -> None:
        remaining = max(0.0, self.deadline - time.monotonic())
        ready, _, _ = select.select([self.abort_fd], [], [], remaining)
        self.reason, self.fired = ("aborted" if ready else "timeout"), True
        while True:  # repeated: a request handled between two `continue`s does nothing
            gdb.post_event(self._interrupt)
            time.sleep(0.2)

    def _interrupt(self) -> None:
        # On gdb's main thread, so `waiting` is stable. Never stop a call: CPython is mid-way.
        if self.waiting and not self.interrupted:
            self.interrupted = True
            gdb.execute("interrupt")

    def check(self) -> None:
        if self.fired or self.interrupted:
            raise Refused(self.reason, "no safe point was reached in time")


class Target:
    """The attached process: calls of exported functions on the selected thread, safe points."""

    def __init__(self, plan: dict[str, Any], status_fd: int, watchdog: Watchdog) -> None:
        self.plan, self.status_fd, self.watchdog = plan, status_fd, watchdog
        self.inferior = gdb.selected_inferior()
        address, expected = plan["expect"]  # code bytes of one function, read from the file
        try:
            found = bytes(self.inferior.read_memory(address, len(expected) // 2)).hex()
        except gdb.MemoryError:
            found = ""
        if found != expected:
            raise Refused("changed", "is not the program it was when inspected (exec, PID reuse)")
        self.exec_seen = False  # it replaced its program: every address we hold is stale
        gdb.events.clear_objfiles.connect(lambda _event: setattr(self, "exec_seen", True))
        gdb.execute("catch exec", to_string=True)  # stop there, before our breakpoint moves in
        gdb.execute("sharedlibrary " + plan["libc"], to_string=True)  # usually loaded already
        self.functions: dict[str, tuple[int, str]] = plan["functions"]  # name: address, prototype
        # libc's (gdb has its symbols): the thread's errno is preserved around our calls.
        errno = int(gdb.parse_and_eval("(unsigned long) &__errno_location"))
        self.functions["__errno_location"] = (errno, "void * (void)")

    def call(self, name: str, *args: int) -> int:
        """Call an exported function by address, cast to its prototype: no debug info needed."""
        address, prototype = self.functions[name]
        restype, params = prototype[:-1].split(" (")
        arguments = ", ".join(f"({t}) {v}" for t, v in zip(params.split(", "), args))  # noqa: B905
        expression = f"(({restype} (*)({params})){address:#x})({arguments})"
        if restype == "void *":
            expression = "(unsigned long) " + expression  # so that int() accepts the value
        report(self.status_fd, "call", name)
        value = gdb.parse_and_eval(expression)
        report(self.status_fd, "back", name)
        return 0 if restype == "void" else int(value)

    @contextmanager
    def errno_kept(self) -> Iterator[None]:
        """Give the thread its errno back: os.listdir, for one, sets it to 0 and reads it later."""
        address = self.call("__errno_location")
        saved = bytes(self.inferior.read_memory(address, 4))
        try:
            yield
        finally:
            self.inferior.write_memory(address, saved)

    def run_source(self) -> None:
        """With the GIL held: run the bootstrap in a fresh dict; raise if it raised."""
        source = self.plan["source"].encode()
        namespace = self.call("PyDict_New")
        buffer = self.call("PyMem_Malloc", len(source) + len(ERROR_NAME) + 2) if namespace else 0
        error = "out of memory in the target"
        try:
            if buffer:
                self.inferior.write_memory(buffer, source + b"\0" + ERROR_NAME + b"\0")
                result = self.call("PyRun_String", buffer, PY_FILE_INPUT, namespace, namespace)
                error = "" if result else "the bootstrap failed before it could catch errors"
                if result:
                    self.call("Py_DecRef", result)
                caught = self.call("PyDict_GetItemString", namespace, buffer + len(source) + 1)
                text = self.call("PyUnicode_AsUTF8", caught) if caught else 0
                char_p = gdb.lookup_type("char").pointer()
                error = gdb.Value(text).cast(char_p).string("utf-8", "replace") if text else error
        finally:
            if namespace:
                self.call("Py_DecRef", namespace)
            if buffer:
                self.call("PyMem_Free", buffer)
            self.call("PyErr_Clear")  # none was set before us (checked): leave none behind
        if error:
            raise Refused("bootstrap", error[:500])

    def parked_threads(self) -> list[tuple[Any, str]]:
        """Threads stopped right after a blocking syscall instruction, best candidates first."""
        if "x86-64" not in gdb.newest_frame().architecture().name():
            return []  # syscall numbers differ elsewhere: rely on PyEval_SaveThread alone
        parked, futex = [], []
        for thread in self.inferior.threads():
            thread.switch()
            frame = gdb.newest_frame()
            try:
                number = int(frame.read_register("orig_rax"))
                if bytes(self.inferior.read_memory(frame.pc() - 2, 2)) != SYSCALL_INSTRUCTION:
                    continue
            except (gdb.error, gdb.MemoryError):
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
        low, high = self.plan["lock_wait"]
        thread.switch()
        frame, depth = gdb.newest_frame(), 0
        while frame is not None and depth < 16:
            if low < frame.pc() <= high:  # a return address points just after the call
                return True
            library = os.path.basename(gdb.solib_name(frame.pc()) or "")
            if not library.startswith(("libc.so", "libpthread.so", "ld-musl")):
                return False
            frame, depth = frame.older(), depth + 1
        return False

    def inject_into_parked(self, thread: Any) -> bool:
        """Take the GIL on a parked thread, run the bootstrap, give the GIL back."""
        thread.switch()
        if self.call("Py_IsInitialized") != 1:
            raise Refused("not-running", "the interpreter is starting up or shutting down")
        if not self.call("PyGILState_GetThisThreadState") or self.call("PyGILState_Check"):
            return False  # not a Python thread, or it holds the GIL (so it is not parked)
        with self.errno_kept():
            state = self.call("PyGILState_Ensure")
            try:
                self.watchdog.check()
                if self.call("PyErr_Occurred"):
                    return False
                self.run_source()
            finally:
                self.call("PyGILState_Release", state)
        return True

    def wait_for_save_thread(self) -> Any:
        """Let the target run until a thread holding the GIL enters PyEval_SaveThread."""
        address = self.functions["PyEval_SaveThread"][0]
        while True:
            self.watchdog.check()
            breakpoint = gdb.Breakpoint(f"*{address:#x}", internal=True)
            gdb.execute("handle SIGINT stop print nopass", to_string=True)
            self.watchdog.waiting, resumed = True, time.monotonic()
            try:
                gdb.execute("continue", to_string=True)
            except gdb.error:
                if not self.exec_seen:  # else an exec() unmapped our breakpoint: see below
                    raise
            finally:
                self.watchdog.waiting = False
                self.watchdog.running += time.monotonic() - resumed
                gdb.execute("handle SIGINT nostop print nopass", to_string=True)
                breakpoint.delete()  # before any call: our own code calls PyEval_SaveThread
            if not self.inferior.pid or self.exec_seen:
                raise Refused("gone", "exited or started another program meanwhile")
            self.watchdog.check()  # if it fired, even a stop at our breakpoint gets no call
            if gdb.newest_frame().pc() != address:
                # A SIGINT meant for the target (the host re-sends it after we detach), or a
                # fault, which `continue` passes on: the target crashes as it would have anyway.
                continue
            usable = self.call("Py_IsInitialized") == 1 and self.call("PyGILState_Check") == 1
            if usable and not self.call("PyErr_Occurred"):
                return gdb.selected_thread()


def inject(target: Target) -> str:
    """Run the bootstrap at the first safe point; return how (for the host's log)."""
    for thread, syscall in target.parked_threads():
        target.watchdog.check()
        if target.inject_into_parked(thread):
            return f"gdb: thread {thread.ptid[1]} parked in {syscall}"
    thread = target.wait_for_save_thread()
    with target.errno_kept():
        target.run_source()
    return f"gdb: thread {thread.ptid[1]} entering PyEval_SaveThread"


def main() -> None:
    with open(os.environ["ASYNC_INSPECT_GDB_PLAN"]) as f:
        plan = json.load(f)
    status_fd = plan["status_fd"]
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a dead host must not kill an attached gdb
    watchdog = Watchdog(plan["abort_fd"], plan["deadline"])
    watchdog.start()
    for command in SETUP:
        gdb.execute(command, to_string=True)
    started = time.monotonic()
    try:
        gdb.execute(f"attach {plan['pid']}", to_string=True)
    except gdb.error as exc:
        return report(status_fd, "error", "attach", exc)
    report(status_fd, "attached")
    # Every thread runs during our calls: the one holding the GIL must be free to release it.
    gdb.execute("set scheduler-locking off", to_string=True)
    try:
        report(status_fd, "method", inject(Target(plan, status_fd, watchdog)))
    except Refused as exc:
        report(status_fd, "error", exc.kind, exc)
    except Exception as exc:  # gdb.error from a call, a memory error: report, then detach
        report(status_fd, "error", "internal", f"{type(exc).__name__}: {exc}")
    finally:
        try:
            if gdb.selected_inferior().pid:
                gdb.execute("detach", to_string=True)
        finally:
            elapsed = time.monotonic() - started
            # Total and stopped ms; the host compares gdb's SIGINT lines with our interrupts.
            times = f"{elapsed * 1000:.0f} {(elapsed - watchdog.running) * 1000:.0f}"
            report(status_fd, "detached", times, int(watchdog.interrupted))


if __name__ == "__main__":
    main()
