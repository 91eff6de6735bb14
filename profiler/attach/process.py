"""Look at a PID from the host: is it CPython, which version, where is its interpreter.

Everything here reads /proc and ELF files only; nothing stops or changes the target.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from profiler.attach import elf
from profiler.errors import (
    NotPython,
    PermissionDenied,
    ProcessNotFound,
    ProcessStopped,
    UnsupportedPython,
)

__all__ = ["PtraceAccess", "TargetInfo", "check_ptrace", "inspect_process", "process_state"]

MINIMUM_VERSION = (3, 12)
_CAP_SYS_PTRACE = 19
_LIBPYTHON = re.compile(r"libpython(\d+)\.(\d+)[a-z]*\.so")
_PYTHON_EXE = re.compile(r"python(\d+)\.(\d+)")
_NOT_FOUND_HINT = "check the PID with `ps`; inside a container, PIDs differ from the host's"
_NOT_PYTHON_HINT = "async-inspect attaches to CPython 3.12+: pass the PID of the python process"
PERMISSION_HINT = (
    "run as root or with CAP_SYS_PTRACE; in a container add the SYS_PTRACE capability "
    "(docker run --cap-add SYS_PTRACE; Kubernetes: capabilities.add [SYS_PTRACE] and hostPID: true)"
)


@dataclass(frozen=True)
class TargetInfo:
    """What async-inspect knows about a CPython process before it attaches."""

    pid: int
    exe: str  # the executable, as a path this (host) process can open
    version: tuple[int, int, int]  # (major, minor, micro); micro is 0 when only a file name told
    version_source: str  # "Py_Version" (read from the process or its file) or "file name"
    python_module: str  # host path of the ELF that holds the interpreter: the exe or libpython
    module_load_bias: int  # added by the loader to the module's link-time addresses
    root: str  # /proc/PID/root: the target's view of the file system
    other_mount_ns: bool  # True when the target runs in another mount namespace (a container)
    stopped: bool  # state T: SIGSTOP or job control
    remote_debug_disabled: bool  # 3.14+: PYTHON_DISABLE_REMOTE_DEBUG or -X disable_remote_debug

    @property
    def version_str(self) -> str:
        """The version as people write it: "3.12.1" (or "3.10" when only a file name told)."""
        parts = self.version if self.version_source == "Py_Version" else self.version[:2]
        return ".".join(map(str, parts))

    @property
    def remote_exec_available(self) -> bool:
        """Whether sys.remote_exec (PEP 768, Python 3.14+) may be used on this target."""
        return self.version >= (3, 14) and not self.remote_debug_disabled


@dataclass(frozen=True)
class PtraceAccess:
    """Whether this process may ptrace the target, and why not (for a `doctor` command)."""

    pid: int
    ptrace_scope: int | None  # /proc/sys/kernel/yama/ptrace_scope; None when Yama is absent
    has_cap_sys_ptrace: bool
    same_uid: bool
    tracer_pid: int  # another debugger already attached (ptrace allows one), else 0

    @property
    def problems(self) -> tuple[str, ...]:
        """One sentence per reason the kernel will refuse ptrace; empty when it should work."""
        found = []
        if self.tracer_pid:
            found.append(f"PID {self.pid} is already traced by PID {self.tracer_pid}")
        if self.ptrace_scope == 3:
            found.append("kernel.yama.ptrace_scope=3 forbids ptrace until reboot")
        elif not self.has_cap_sys_ptrace:
            if self.ptrace_scope == 2:
                found.append("kernel.yama.ptrace_scope=2 requires CAP_SYS_PTRACE")
            elif self.ptrace_scope == 1:
                found.append("kernel.yama.ptrace_scope=1 only allows tracing own children")
            if not self.same_uid:
                found.append(f"PID {self.pid} belongs to another user")
        return tuple(found)


def process_state(pid: int) -> str:
    """Return the one-letter state of /proc/PID/stat (R, S, D, T, t, Z...); raise if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return _state_from_stat(f.read())
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessNotFound(f"no process with PID {pid}", hint=_NOT_FOUND_HINT) from None


def _state_from_stat(stat: bytes) -> str:
    # The command name may contain spaces and parentheses: the state follows the last ')'.
    end = stat.rindex(b")")
    return stat[end + 2 : end + 3].decode()


def inspect_process(pid: int, *, allow_stopped: bool = False) -> TargetInfo:
    """Describe `pid` if it is a CPython 3.12+ process we can read.

    Raises ProcessNotFound, NotPython, UnsupportedPython, PermissionDenied, and ProcessStopped
    (unless `allow_stopped`, for commands that only report).
    """
    if pid <= 0 or not os.path.isdir(f"/proc/{pid}"):
        raise ProcessNotFound(f"no process with PID {pid}", hint=_NOT_FOUND_HINT)
    state = process_state(pid)
    if state == "Z":
        raise ProcessNotFound(f"PID {pid} has exited (zombie)", hint=_NOT_FOUND_HINT)
    try:
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read().splitlines()
        exe_in_target = os.readlink(f"/proc/{pid}/exe")
        other_ns = os.readlink("/proc/self/ns/mnt") != os.readlink(f"/proc/{pid}/ns/mnt")
    except PermissionError:
        raise PermissionDenied(f"cannot read /proc/{pid}", hint=PERMISSION_HINT) from None
    except (FileNotFoundError, ProcessLookupError):
        # Kernel threads have no exe; a vanished process has no /proc entry.
        if os.path.isdir(f"/proc/{pid}"):
            raise NotPython(f"PID {pid} is not a CPython process", hint=_NOT_PYTHON_HINT) from None
        raise ProcessNotFound(f"no process with PID {pid}", hint=_NOT_FOUND_HINT) from None
    root = f"/proc/{pid}/root"

    def host_path(path: str, start: int, end: int) -> str:
        if path.endswith(" (deleted)"):  # replaced on disk since start: the mapping still has it
            return f"/proc/{pid}/map_files/{start:x}-{end:x}"
        return root + path if other_ns else path

    exe = root + exe_in_target if other_ns else exe_in_target
    if exe_in_target.endswith(" (deleted)"):  # replaced on disk: /proc/PID/exe still opens it
        exe = f"/proc/{pid}/exe"
    module, bias = _find_interpreter(pid, maps, exe_in_target, host_path)
    version, source = _read_version(pid, module, bias)
    if version[:2] < MINIMUM_VERSION:
        shown = ".".join(map(str, version if source == "Py_Version" else version[:2]))
        raise UnsupportedPython(
            f"PID {pid} runs Python {shown}; async-inspect needs 3.12 or newer",
            hint="run the application on CPython 3.12+",
        )
    if state == "T" and not allow_stopped:
        raise ProcessStopped(
            f"PID {pid} is stopped (SIGSTOP or job control)",
            hint=f"resume it with `kill -CONT {pid}` and try again",
        )
    return TargetInfo(
        pid=pid,
        exe=exe,
        version=version,
        version_source=source,
        python_module=module,
        module_load_bias=bias,
        root=root,
        other_mount_ns=other_ns,
        stopped=state == "T",
        remote_debug_disabled=version >= (3, 14) and _remote_debug_disabled(pid),
    )


def _find_interpreter(
    pid: int, maps: list[str], exe: str, host_path: Callable[[str, int, int], str]
) -> tuple[str, int]:
    """Return (host path, load bias) of libpython if mapped, else of the executable."""
    libs: list[tuple[str, int, int]] = []
    exes: list[tuple[str, int, int]] = []
    seen = set()
    for line in maps:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5] in seen:
            continue
        path = fields[5]
        is_lib = _LIBPYTHON.search(os.path.basename(path)) is not None
        if not is_lib and path != exe:
            continue
        seen.add(path)  # the first mapping of a file is the one at file offset 0
        start, end = (int(x, 16) for x in fields[0].split("-"))
        (libs if is_lib else exes).append((host_path(path, start, end), start, int(fields[2], 16)))
    for module, start, offset in libs + exes:
        try:
            if elf.dynamic_symbols(module, ["Py_Initialize"]):
                return module, elf.load_bias(module, start, offset)
        except (OSError, elf.ElfError):
            continue
    name = os.path.basename(exe)
    raise NotPython(f"PID {pid} ({name}) is not a CPython process", hint=_NOT_PYTHON_HINT)


def _read_version(pid: int, module: str, bias: int) -> tuple[tuple[int, int, int], str]:
    """Decode Py_Version (PY_VERSION_HEX, exported since 3.11), else guess from the file name."""
    symbols = elf.dynamic_symbols(module, ["Py_Version"])
    if "Py_Version" in symbols:
        address = symbols["Py_Version"].value
        raw = b""
        try:  # the live value first: the file on disk may have been replaced by an upgrade
            fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
            try:
                raw = os.pread(fd, 4, bias + address)
            finally:
                os.close(fd)
        except OSError:
            pass
        if len(raw) != 4:
            raw = elf.read_at_vaddr(module, address, 4)
        # Py_Version is an unsigned long whose value fits its low 32 bits (x86-64: first 4).
        version = _decode_py_version(int.from_bytes(raw, "little"))
        if version is not None:
            return version, "Py_Version"
    match = _LIBPYTHON.search(os.path.basename(module)) or _PYTHON_EXE.search(module)
    if match is None:
        raise UnsupportedPython(
            f"PID {pid} runs a CPython whose version cannot be determined",
            hint="async-inspect needs CPython 3.12 or newer",
        )
    return (int(match[1]), int(match[2]), 0), "file name"


def _remote_debug_disabled(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
    except OSError:
        return False
    return _disables_remote_debug(argv, environ)


def _disables_remote_debug(argv: list[str], environ: list[bytes]) -> bool:
    """Apply CPython 3.14's startup rule (PEP 768) to a process's initial argv and environment."""
    ignore_env, args = False, iter(argv[1:])
    for arg in args:
        if arg in ("-", "--") or not arg.startswith("-"):
            break  # the script: what follows belongs to the program
        if arg.startswith("--"):
            if arg == "--check-hash-based-pycs":
                next(args, None)  # skip its value
            continue
        for i, flag in enumerate(arg[1:], start=2):
            if flag in "XW":  # takes a value, attached or as the next argument
                value = arg[i:] or next(args, "")
                if flag == "X" and value == "disable_remote_debug":
                    return True
                break
            if flag in "cm":
                return not ignore_env and _env_disables(environ)
            ignore_env = ignore_env or flag in "EI"  # -E, -I: PYTHON* variables are ignored
    return not ignore_env and _env_disables(environ)


def _env_disables(environ: list[bytes]) -> bool:
    for variable in environ:
        name, _, value = variable.partition(b"=")
        if name == b"PYTHON_DISABLE_REMOTE_DEBUG" and value:  # any non-empty value disables
            return True
    return False


def _decode_py_version(value: int) -> tuple[int, int, int] | None:
    """(major, minor, micro) from a PY_VERSION_HEX such as 0x030C01F0, or None if it is not one."""
    major, minor, micro = (value >> 24) & 0xFF, (value >> 16) & 0xFF, (value >> 8) & 0xFF
    return (major, minor, micro) if major == 3 and value >> 32 == 0 else None


def check_ptrace(pid: int) -> PtraceAccess:
    """Gather what decides whether ptrace(pid) will be allowed: Yama, capability, owner."""
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope: int | None = int(f.read())
    except (OSError, ValueError):
        scope = None
    own = _status_fields(os.getpid())
    try:
        target = _status_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessNotFound(f"no process with PID {pid}", hint=_NOT_FOUND_HINT) from None
    uids = set(target.get("Uid", "").split()[:3])
    return PtraceAccess(
        pid=pid,
        ptrace_scope=scope,
        has_cap_sys_ptrace=bool(int(own.get("CapEff", "0"), 16) >> _CAP_SYS_PTRACE & 1),
        same_uid=uids == {str(os.getuid())},
        tracer_pid=int(target.get("TracerPid", "0")),
    )


def _status_fields(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
