"""Ask a CPython 3.14+ process to run a Python file, the PEP 768 way, from any Python 3.12+.

`sys.remote_exec` exists only in 3.14+, and our CLI may run on 3.12, so we speak the protocol
ourselves: find `_PyRuntime` through the target's ELF files, read its `_Py_DebugOffsets`, pick a
thread state, then write -- in CPython's order -- the script path, the pending flag and the
"please stop" bit of that thread's eval breaker. Only that thread runs the script, at its next
eval-breaker check: a call or a loop back edge in Python code. So the script runs within
milliseconds in a thread that executes Python code, but not while the thread waits in C:
an idle asyncio loop parked in epoll_wait, a main thread blocked in `Thread.join()`.
`wake_idle_thread` handles the first case; the second needs the thread that runs the loop.

Memory goes through process_vm_readv/writev, or /proc/PID/mem under seccomp (memory.py).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import select
import stat
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from profiler.attach._debug_offsets import (
    HEADER_SIZE,
    DebugOffsets,
    find_runtime,
    layout_size,
    parse_debug_offsets,
    parse_header,
)
from profiler.attach.memory import ProcessMemory, memory_error, not_found, permission_denied
from profiler.errors import (
    AttachError,
    NotPython,
    PermissionDenied,
    ProcessNotFound,
    ProcessStopped,
    RemoteDebugDisabled,
    UnsupportedPython,
)

__all__ = [
    "PythonThread",
    "cancel_remote_exec",
    "list_python_threads",
    "remote_exec",
    "remote_exec_available",
    "wake_idle_thread",
]

_PLEASE_STOP_BIT = 1 << 5  # _PY_EVAL_PLEASE_STOP_BIT: makes the thread call _Py_HandlePending
_MAX_LIST_WALK = 100_000  # a torn read of a linked list must not loop forever


@dataclass(frozen=True)
class PythonThread:
    """A thread with a Python thread state, as `list_python_threads` reports it."""

    native_id: int  # the TID as this process sees it (/proc/PID/task/TID)
    is_main: bool
    name: str  # the OS thread name; 3.14 copies threading.Thread.name into it


def remote_exec(pid: int, script_path_in_target: str, *, thread_id: int | None = None) -> None:
    """Ask process `pid` to run the file `script_path_in_target` at its next safe point.

    Returns once the request is written; the script runs later, in the chosen thread (default
    the main thread; `thread_id` is a native TID as listed by `list_python_threads`), as soon
    as that thread executes Python code. The path is looked up in the target's filesystem:
    for a target in another mount namespace, write the file under /proc/PID/root first.
    A request not yet picked up is replaced. Raises AttachError subclasses.
    """
    if not script_path_in_target.startswith("/"):
        raise ValueError("script_path_in_target must be absolute: the target resolves it")
    encoded = os.fsencode(script_path_in_target)
    target = _Target.open(pid)
    limit = target.offsets["debugger_support.debugger_script_path_size"]
    if len(encoded) >= limit:
        raise AttachError(
            f"script path is {len(encoded)} bytes; Python accepts at most {limit - 1}",
            hint="put the script in a directory with a shorter path",
        )
    _check_script_readable(pid, script_path_in_target)
    tstate, _ = target.thread_state(thread_id)
    support = tstate + target.offsets["debugger_support.remote_debugger_support"]
    # Path before flag before breaker, as CPython writes them: the thread must never see the
    # flag without its path.
    target.memory.write(support + target.offsets["debugger_support.debugger_script_path"],
                        encoded + b"\0")  # fmt: skip
    target.memory.write(target.pending_address(tstate), struct.pack("<i", 1))
    # CPython reads and writes the whole word; we touch only the byte holding the bit, so a
    # racing update of the other bits (the instrumentation version) cannot be undone.
    breaker = tstate + target.offsets["debugger_support.eval_breaker"]
    low_byte = target.memory.read(breaker, 1)[0]
    target.memory.write(breaker, bytes([low_byte | _PLEASE_STOP_BIT]))


def cancel_remote_exec(pid: int, *, thread_id: int | None = None) -> bool:
    """Withdraw a `remote_exec` request the thread has not picked up yet.

    Returns True if a request was pending and is now withdrawn, False if there was none (it
    already ran). Use it after a timeout, so that the script does not run unexpectedly later.
    """
    target = _Target.open(pid)
    tstate, _ = target.thread_state(thread_id)
    pending = target.pending_address(tstate)
    if struct.unpack("<i", target.memory.read(pending, 4))[0] != 1:
        return False
    target.memory.write(pending, struct.pack("<i", 0))
    return True


def remote_exec_available(pid: int) -> str | None:
    """None if `remote_exec(pid, ...)` can be used; otherwise the one-line reason why not."""
    try:
        _Target.open(pid).thread_state(None)
    except AttachError as error:
        return str(error)
    return None


def list_python_threads(pid: int) -> list[PythonThread]:
    """The threads of `pid` that have a Python thread state, main thread first."""
    target = _Target.open(pid)
    main = target.main_thread_state()
    host_tids = _host_tids(pid)
    threads = [
        PythonThread(host, tstate == main, _thread_name(pid, host))
        for tstate, ns_tid in target.thread_states()
        if (host := host_tids.get(ns_tid)) is not None
    ]
    return sorted(threads, key=lambda thread: not thread.is_main)


def wake_idle_thread(pid: int, *, thread_id: int | None = None, timeout: float = 1.0) -> bool:
    """Make a thread parked in an asyncio selector run its pending `remote_exec` script now.

    An idle event loop sleeps in epoll_wait and would run the script only when some I/O or
    timer wakes it. We add, to the epoll set it waits on, a one-shot registration of an eventfd
    of ours that is already readable and tagged with fd -1: epoll_wait returns, the selector
    skips the unknown fd (it looks events up in its own table), the loop goes round once and
    runs the script. No signal, nothing written to the app's sockets; closing our eventfd
    removes the registration. Done only when the innermost Python frame of the thread is
    `select` in selectors.py, the one caller we know ignores an unknown fd.

    Returns True once the script has been picked up (within `timeout` seconds), False if there
    was nothing pending or the thread is not parked in such a selector.
    """
    target = _Target.open(pid)
    tstate, host_tid = target.thread_state(thread_id)
    if not target.is_pending(tstate):
        return False
    epoll_fd = _epoll_fd_waited_on(pid, host_tid)
    if epoll_fd is None or not _parked_in_selector(target, tstate):
        return False
    try:
        with _borrowed_fd(pid, epoll_fd) as epoll, _ready_eventfd() as event_fd:
            # The registration must live until the thread has collected the event: epoll
            # drops an item whose file is closed, and the thread would go back to sleep.
            _epoll_add_unknown(epoll, event_fd)
            deadline = time.monotonic() + timeout
            while target.is_pending(tstate) and time.monotonic() < deadline:
                time.sleep(0.001)
    except OSError as error:
        if error.errno in (errno.EPERM, errno.EACCES, errno.ESRCH):
            raise memory_error(pid, error.errno) from None
        return False  # a kernel without pidfd_getfd (5.6+), or the fd closed meanwhile
    return not target.is_pending(tstate)


@dataclass(frozen=True)
class _Target:
    """A validated 3.14+ process: its memory, its debug offsets, its main interpreter."""

    pid: int
    memory: ProcessMemory
    offsets: DebugOffsets
    interpreter: int

    @classmethod
    def open(cls, pid: int) -> _Target:
        _check_process_state(pid)
        memory = ProcessMemory(pid)
        try:
            runtime, section_size = find_runtime(pid, memory.read)
        except OSError as error:  # /proc/PID/maps
            raise memory_error(pid, error.errno or errno.EIO) from None
        try:
            size = layout_size(parse_header(memory.read(runtime, HEADER_SIZE)))
            offsets = parse_debug_offsets(memory.read(runtime, size))
        except (UnsupportedPython, NotPython) as error:
            raise type(error)(f"PID {pid}: {error.message}", hint=error.hint) from None
        if offsets["runtime_state.size"] > section_size:
            raise NotPython(
                f"PID {pid}: _PyRuntime is larger than its ELF section",
                hint="the process may not be a standard CPython build; attach with gdb instead",
            )
        if memory.read_pointer(runtime + offsets["runtime_state.finalizing"]):
            raise AttachError(f"Python in PID {pid} is shutting down", hint="nothing to attach to")
        interpreter = _main_interpreter(pid, memory, offsets, runtime)
        enabled = memory.read(interpreter + offsets["debugger_support.remote_debugging_enabled"], 4)
        if struct.unpack("<i", enabled)[0] != 1:
            raise RemoteDebugDisabled(
                f"PID {pid} (Python {offsets.version_text}) has remote debugging disabled",
                hint="restart it without -X disable-remote-debug and PYTHON_DISABLE_REMOTE_DEBUG"
                " (or use a build configured with remote debugging), or attach with gdb",
            )
        return cls(pid, memory, offsets, interpreter)

    def main_thread_state(self) -> int:
        tstate = self.field(self.interpreter, "interpreter_state.threads_main")
        if not tstate:
            raise AttachError(f"PID {self.pid} has no main thread state", hint="try again")
        return tstate

    def thread_states(self) -> Iterator[tuple[int, int]]:
        """(thread state address, native thread id as the target's PID namespace sees it)."""
        tstate = self.field(self.interpreter, "interpreter_state.threads_head")
        for _ in range(_MAX_LIST_WALK):
            if not tstate:
                return
            yield tstate, self.field(tstate, "thread_state.native_thread_id")
            tstate = self.field(tstate, "thread_state.next")

    def thread_state(self, thread_id: int | None) -> tuple[int, int]:
        """(thread state address, host TID) of `thread_id`, or of the main thread if None."""
        if thread_id is None:
            return self.main_thread_state(), self.pid
        wanted = _namespace_tid(self.pid, thread_id)
        for tstate, ns_tid in self.thread_states():
            if ns_tid == wanted:
                return tstate, thread_id
        raise AttachError(
            f"thread {thread_id} of PID {self.pid} runs no Python code",
            hint="pick one of the threads list_python_threads() reports",
        )

    def field(self, base: int, name: str) -> int:
        """The 8-byte field `name` (``"thread_state.next"``) of the struct at `base`."""
        return self.memory.read_pointer(base + self.offsets[name])

    def pending_address(self, tstate: int) -> int:
        support = tstate + self.offsets["debugger_support.remote_debugger_support"]
        return support + self.offsets["debugger_support.debugger_pending_call"]

    def is_pending(self, tstate: int) -> bool:
        return bool(struct.unpack("<i", self.memory.read(self.pending_address(tstate), 4))[0])


def _main_interpreter(pid: int, memory: ProcessMemory, offsets: DebugOffsets, runtime: int) -> int:
    # The list starts with the newest interpreter; the main one (id 0) is where the app runs.
    interpreter = memory.read_pointer(runtime + offsets["runtime_state.interpreters_head"])
    for _ in range(_MAX_LIST_WALK):
        if not interpreter:
            break
        if memory.read_pointer(interpreter + offsets["interpreter_state.id"]) == 0:
            return interpreter
        interpreter = memory.read_pointer(interpreter + offsets["interpreter_state.next"])
    raise AttachError(f"PID {pid} has no running Python interpreter", hint="try again")


# --- the process, its threads and its files -----------------------------------------------------


def _check_process_state(pid: int) -> None:
    if pid <= 0:
        raise not_found(pid)
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            state = stat_file.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        raise not_found(pid) from None
    if state in ("Z", "X"):
        raise not_found(pid)
    if state in ("T", "t"):
        raise ProcessStopped(
            f"PID {pid} is stopped and would not run the script",
            hint=f"resume it (kill -CONT {pid}) or detach the debugger holding it",
        )


def _namespace_tid(pid: int, host_tid: int) -> int:
    # A thread state records the TID the target sees; in a PID namespace (a container) that
    # differs from ours. NSpid lists the TID in each namespace, the target's own last.
    try:
        with open(f"/proc/{pid}/task/{host_tid}/status") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except FileNotFoundError:
        pass
    raise AttachError(f"PID {pid} has no thread {host_tid}", hint="list its threads again")


def _host_tids(pid: int) -> dict[int, int]:
    """{TID in the target's PID namespace: TID in ours} for every thread of `pid`."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        raise not_found(pid) from None
    mapping = {}
    for task in tasks:
        try:
            mapping[_namespace_tid(pid, int(task))] = int(task)
        except AttachError:
            continue  # the thread exited while we looked
    return mapping


def _thread_name(pid: int, tid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return ""


def _check_script_readable(pid: int, path: str) -> None:
    # The target opens the file with its own credentials and, on failure, prints an error to
    # its stderr, visible to the app's users: check first that it will succeed.
    try:
        info = os.stat(f"/proc/{pid}/root{path}")
    except FileNotFoundError:
        raise AttachError(
            f"{path} does not exist in the filesystem of PID {pid}",
            hint=f"write the script under /proc/{pid}/root first",
        ) from None
    except PermissionError:
        raise permission_denied(pid) from None
    uid, gids = _file_credentials(pid)
    readable = (
        not stat.S_ISDIR(info.st_mode)
        and (uid == 0
             or (info.st_uid == uid and info.st_mode & stat.S_IRUSR)
             or (info.st_gid in gids and info.st_mode & stat.S_IRGRP)
             or info.st_mode & stat.S_IROTH)
    )  # fmt: skip
    if not readable:
        raise AttachError(
            f"PID {pid} (uid {uid}) cannot read {path}",
            hint="make the script readable by that user (chmod 0644, or chown it)",
        )


def _file_credentials(pid: int) -> tuple[int, set[int]]:
    """(filesystem uid, all gids) the target opens files with."""
    uid, gids = 0, set()
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key == "Uid":
                uid = int(value.split()[3])
            elif key == "Gid":
                gids.add(int(value.split()[3]))
            elif key == "Groups":
                gids.update(int(gid) for gid in value.split())
    return uid, gids


# --- waking a thread parked in epoll_wait ---------------------------------------------------------

_EPOLL_WAIT_SYSCALLS = {"x86_64": {232, 281, 441}, "aarch64": {22, 441}}
_SYS_PIDFD_GETFD = 438  # the same number on every architecture
_EPOLL_CTL_ADD = 1
_FRAME_OWNED_BY_INTERPRETER = 3  # owners 3 and up are not frames of Python functions
_STACKREF_TAG_BITS = 3
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.epoll_ctl.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_char_p)


def _epoll_fd_waited_on(pid: int, tid: int) -> int | None:
    """The target's epoll descriptor thread `tid` is blocked on, or None if it is not."""
    try:
        with open(f"/proc/{pid}/task/{tid}/syscall") as syscall:
            fields = syscall.read().split()
    except OSError:
        return None
    calls = _EPOLL_WAIT_SYSCALLS.get(platform.machine(), set())
    if len(fields) < 2 or not fields[0].isdigit() or int(fields[0]) not in calls:
        return None
    return int(fields[1], 16)


def _parked_in_selector(target: _Target, tstate: int) -> bool:
    if target.offsets.free_threaded:
        return False  # string and stack-reference layouts differ; never seen in a test
    try:
        return _innermost_code_is_selector_select(target, tstate)
    except (ProcessNotFound, PermissionDenied):
        raise
    except AttachError:
        return False  # the thread moved on while we walked its frames


def _innermost_code_is_selector_select(target: _Target, tstate: int) -> bool:
    frame = target.field(tstate, "thread_state.current_frame")
    for _ in range(64):
        if not frame:
            return False
        owner = target.memory.read(frame + target.offsets["interpreter_frame.owner"], 1)[0]
        if owner < _FRAME_OWNED_BY_INTERPRETER:
            code = target.field(frame, "interpreter_frame.executable") & ~_STACKREF_TAG_BITS
            name = _read_str(target, target.field(code, "code_object.name"))
            filename = _read_str(target, target.field(code, "code_object.filename"))
            return name == "select" and filename is not None and filename.endswith("/selectors.py")
        frame = target.field(frame, "interpreter_frame.previous")
    return False


def _read_str(target: _Target, address: int) -> str | None:
    """A compact str object of the target, or None if it is not one we can read."""
    offsets = target.offsets
    state = struct.unpack("<I", target.memory.read(address + offsets["unicode_object.state"], 4))[0]
    length = target.memory.read_pointer(address + offsets["unicode_object.length"])
    kind, compact, ascii_only = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
    if not compact or kind not in (1, 2, 4) or length > 4096:
        return None
    # Compact ASCII text follows PyASCIIObject; other compact text follows the two extra
    # fields (utf8_length, utf8) of PyCompactUnicodeObject.
    data = address + offsets["unicode_object.asciiobject_size"] + (0 if ascii_only else 16)
    raw = target.memory.read(data, length * kind)
    return raw.decode({1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind], errors="replace")


@contextmanager
def _borrowed_fd(pid: int, fd: int) -> Iterator[int]:
    """A duplicate, in our process, of file descriptor `fd` of process `pid` (pidfd_getfd)."""
    pidfd = os.pidfd_open(pid)
    try:
        dup = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if dup < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
    finally:
        os.close(pidfd)
    try:
        yield dup
    finally:
        os.close(dup)


@contextmanager
def _ready_eventfd() -> Iterator[int]:
    event_fd = os.eventfd(1, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        yield event_fd
    finally:
        os.close(event_fd)


def _epoll_add_unknown(epoll_fd: int, fd: int) -> None:
    # struct epoll_event is packed on x86-64 only. data = all ones: the target reads fd -1.
    layout = "=IQ" if platform.machine() == "x86_64" else "=I4xQ"
    event = ctypes.create_string_buffer(
        struct.pack(layout, select.EPOLLIN | select.EPOLLONESHOT, 2**64 - 1)
    )
    if _libc.epoll_ctl(epoll_fd, _EPOLL_CTL_ADD, fd, event) < 0:
        raise OSError(ctypes.get_errno(), "epoll_ctl")
