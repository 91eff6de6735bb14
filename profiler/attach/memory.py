"""Reading and writing another process's memory: process_vm_readv/writev (they respect page
protections), and /proc/PID/mem only where a seccomp profile blocks those calls (Docker's
default). The kernel checks the same ptrace permission for both. Failures become the CLI's
errors: no such process, no permission (with what to do), or memory that cannot be read.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Callable

from profiler.errors import AttachError, PermissionDenied, ProcessNotFound

__all__ = ["ProcessMemory", "memory_error", "not_found", "permission_denied"]


class _IOVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


_libc = ctypes.CDLL(None, use_errno=True)
for _name in ("process_vm_readv", "process_vm_writev"):
    _function = getattr(_libc, _name)
    _function.restype = ctypes.c_ssize_t
    _function.argtypes = (ctypes.c_int, ctypes.POINTER(_IOVec), ctypes.c_ulong,
                          ctypes.POINTER(_IOVec), ctypes.c_ulong, ctypes.c_ulong)  # fmt: skip


class ProcessMemory:
    """Reads and writes another process's memory."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._proc_mem = False  # switched on when seccomp refuses process_vm_*

    def read(self, address: int, size: int) -> bytes:
        buffer = ctypes.create_string_buffer(size)
        self._transfer(_libc.process_vm_readv, address, buffer, size)
        return buffer.raw

    def read_pointer(self, address: int) -> int:
        value: int = struct.unpack("<Q", self.read(address, 8))[0]
        return value

    def write(self, address: int, data: bytes) -> None:
        buffer = ctypes.create_string_buffer(data, len(data))
        self._transfer(_libc.process_vm_writev, address, buffer, len(data), writing=True)

    def _transfer(
        self,
        call: Callable[..., int],
        address: int,
        buffer: ctypes.Array[ctypes.c_char],
        size: int,
        *,
        writing: bool = False,
    ) -> None:
        done = 0
        while done < size and not self._proc_mem:
            local = _IOVec(ctypes.addressof(buffer) + done, size - done)
            remote = _IOVec(address + done, size - done)
            moved = call(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
            if moved > 0:
                done += moved
                continue
            code = ctypes.get_errno() if moved < 0 else errno.EFAULT
            if code in (errno.ENOSYS, errno.EPERM) and done == 0:
                self._proc_mem = True  # seccomp: try /proc/PID/mem, same ptrace check
                break
            raise memory_error(self.pid, code, address + done)
        if done < size:
            self._proc_mem_transfer(address, buffer, size, writing)

    def _proc_mem_transfer(
        self, address: int, buffer: ctypes.Array[ctypes.c_char], size: int, writing: bool
    ) -> None:
        try:
            with open(f"/proc/{self.pid}/mem", "r+b" if writing else "rb", buffering=0) as mem:
                mem.seek(address)
                if writing:
                    written = mem.write(buffer.raw[:size])
                    if written != size:
                        raise OSError(errno.EIO, "short write")
                else:
                    data = mem.read(size)
                    if len(data) != size:
                        raise OSError(errno.EIO, "short read")
                    ctypes.memmove(buffer, data, size)
        except OSError as error:
            raise memory_error(self.pid, error.errno or errno.EIO, address) from None


def memory_error(pid: int, code: int, address: int | None = None) -> AttachError:
    if code == errno.ESRCH or not os.path.exists(f"/proc/{pid}"):
        return not_found(pid)
    if code in (errno.EPERM, errno.EACCES):
        return permission_denied(pid)
    where = f" at {address:#x}" if address is not None else ""
    return AttachError(
        f"cannot access the memory of PID {pid}{where}: {os.strerror(code)}",
        hint="the process may be exiting, or is not the CPython build it looks like",
    )


def not_found(pid: int) -> ProcessNotFound:
    return ProcessNotFound(f"no process with PID {pid}", hint="check the PID; it may have exited")


def permission_denied(pid: int) -> PermissionDenied:
    hint = (
        "run as root or with CAP_SYS_PTRACE; in a container add SYS_PTRACE"
        " (docker --cap-add SYS_PTRACE; Kubernetes: capabilities.add [SYS_PTRACE] and hostPID)"
    )
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as scope:
            level = scope.read().strip()
        if level != "0":
            hint += f"; kernel.yama.ptrace_scope is {level}"
    except OSError:
        pass
    return PermissionDenied(f"not allowed to access the memory of PID {pid}", hint=hint)
