"""Where a CPython interpreter publishes its memory layout, and how to read it.

Since 3.13, `_PyRuntime` starts with `_Py_DebugOffsets`: the cookie ``xdebugpy``, the
``PY_VERSION_HEX`` of the build, then groups of ``uint64`` offsets (``thread_state.next``, ...).
`_PyRuntime` itself lives in an ELF section named ``.PyRuntime`` of the executable or of
libpython. 3.14 (PEP 768) appends a ``debugger_support`` group: what a debugger writes to
ask a thread to run a script.

The *shape* of `_Py_DebugOffsets` (which groups, which fields, in which order) changes between
minor versions and pre-releases, and the struct carries no field count, so we keep one field
list per minor version and refuse anything else rather than guess.

Parsing works on bytes and files, so it is unit-tested against the interpreters on disk; only
`find_runtime` looks at a live process, through /proc and a memory-read callback.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from profiler.errors import NotPython, UnsupportedPython

__all__ = [
    "COOKIE",
    "HEADER_SIZE",
    "DebugOffsets",
    "ElfSection",
    "find_elf_section",
    "find_runtime",
    "format_version",
    "layout_size",
    "parse_debug_offsets",
    "parse_header",
    "version_from_filename",
]

COOKIE = b"xdebugpy"
HEADER_SIZE = 16  # cookie + version: enough to decide which layout follows

# The 3.14 `_Py_DebugOffsets` after the cookie, as (group, fields): every field is a uint64.
# Taken from the field names of Include/internal/pycore_debug_offsets.h on the 3.14 branch and
# checked against the initial contents of `.PyRuntime` in a 3.14.10 build (see the unit tests).
_LAYOUT_3_14: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("", ("version", "free_threaded")),
    ("runtime_state", ("size", "finalizing", "interpreters_head")),
    (
        "interpreter_state",
        (
            "size", "id", "next", "threads_head", "threads_main", "gc", "imports_modules",
            "sysdict", "builtins", "ceval_gil", "gil_runtime_state", "gil_runtime_state_enabled",
            "gil_runtime_state_locked", "gil_runtime_state_holder", "code_object_generation",
            "tlbc_generation",
        ),
    ),
    (
        "thread_state",
        (
            "size", "prev", "next", "interp", "current_frame", "thread_id", "native_thread_id",
            "datastack_chunk", "status",
        ),
    ),
    (
        "interpreter_frame",
        ("size", "previous", "executable", "instr_ptr", "localsplus", "owner", "stackpointer",
         "tlbc_index"),
    ),
    (
        "code_object",
        ("size", "filename", "name", "qualname", "linetable", "firstlineno", "argcount",
         "localsplusnames", "localspluskinds", "co_code_adaptive", "co_tlbc"),
    ),
    ("pyobject", ("size", "ob_type")),
    ("type_object", ("size", "tp_name", "tp_repr", "tp_flags")),
    ("tuple_object", ("size", "ob_item", "ob_size")),
    ("list_object", ("size", "ob_item", "ob_size")),
    ("set_object", ("size", "used", "table", "mask")),
    ("dict_object", ("size", "ma_keys", "ma_values")),
    ("float_object", ("size", "ob_fval")),
    ("long_object", ("size", "lv_tag", "ob_digit")),
    ("bytes_object", ("size", "ob_size", "ob_sval")),
    ("unicode_object", ("size", "state", "length", "asciiobject_size")),
    ("gc", ("size", "collecting")),
    ("gen_object", ("size", "gi_name", "gi_iframe", "gi_frame_state")),
    ("llist_node", ("next", "prev")),
    (
        "debugger_support",
        ("eval_breaker", "remote_debugger_support", "remote_debugging_enabled",
         "debugger_pending_call", "debugger_script_path", "debugger_script_path_size"),
    ),
)  # fmt: skip

_LAYOUTS = {(3, 14): _LAYOUT_3_14}
_FIRST_REMOTE_EXEC = (3, 14)


def format_version(hexversion: int) -> str:
    """``0x030E0AF0`` -> ``"3.14.10"``; pre-releases keep their suffix (``"3.14.0b2"``)."""
    major, minor, micro = hexversion >> 24, (hexversion >> 16) & 0xFF, (hexversion >> 8) & 0xFF
    level, serial = (hexversion >> 4) & 0xF, hexversion & 0xF
    suffix = {0xA: f"a{serial}", 0xB: f"b{serial}", 0xC: f"rc{serial}"}.get(level, "")
    return f"{major}.{minor}.{micro}{suffix}"


def parse_header(header: bytes) -> int:
    """The ``PY_VERSION_HEX`` from the first `HEADER_SIZE` bytes of `_PyRuntime`.

    Raises UnsupportedPython when the cookie is missing: CPython 3.12 and older have a
    `.PyRuntime` section but publish no debug offsets in it.
    """
    if len(header) < HEADER_SIZE or header[:8] != COOKIE:
        raise UnsupportedPython(
            "the interpreter publishes no debug offsets (CPython older than 3.13)",
            hint="remote execution needs Python 3.14+; attach with gdb instead",
        )
    version: int = struct.unpack_from("<Q", header, 8)[0]
    return version


def layout_size(hexversion: int) -> int:
    """How many bytes of `_PyRuntime` hold the debug offsets of this version.

    Raises UnsupportedPython for versions without remote execution (3.13), for pre-releases
    (their layout moved between betas) and for minors newer than this code knows.
    """
    major_minor = (hexversion >> 24, (hexversion >> 16) & 0xFF)
    shown = format_version(hexversion)
    if major_minor < _FIRST_REMOTE_EXEC:
        raise UnsupportedPython(
            f"Python {shown} has no remote execution (PEP 768 is new in 3.14)",
            hint="attach with gdb instead",
        )
    if major_minor not in _LAYOUTS:
        raise UnsupportedPython(
            f"the debug-offsets layout of Python {shown} is unknown to this async-inspect",
            hint="upgrade async-inspect, or attach with gdb",
        )
    if (hexversion >> 4) & 0xF != 0xF:
        raise UnsupportedPython(
            f"Python {shown} is a pre-release whose debug-offsets layout may differ",
            hint="use a final 3.14 release, or attach with gdb",
        )
    fields = sum(len(names) for _, names in _LAYOUTS[major_minor])
    return len(COOKIE) + 8 * fields


@dataclass(frozen=True)
class DebugOffsets:
    """The parsed `_Py_DebugOffsets` of one interpreter: ``offsets["thread_state.next"]``."""

    version: int
    free_threaded: bool
    fields: Mapping[str, int]

    def __getitem__(self, name: str) -> int:
        return self.fields[name]

    @property
    def version_text(self) -> str:
        """The version for messages, e.g. ``"3.14.10"``."""
        return format_version(self.version)


def parse_debug_offsets(raw: bytes) -> DebugOffsets:
    """Parse the start of `_PyRuntime` (at least `layout_size()` bytes) into DebugOffsets.

    Raises UnsupportedPython for unknown layouts and NotPython when the numbers cannot be an
    interpreter's (we would otherwise write through garbage offsets into a live process).
    """
    version = parse_header(raw)
    size = layout_size(version)
    if len(raw) < size:
        raise ValueError(f"need {size} bytes of debug offsets, got {len(raw)}")
    values = iter(struct.unpack_from(f"<{(size - len(COOKIE)) // 8}Q", raw, len(COOKIE)))
    major_minor = (version >> 24, (version >> 16) & 0xFF)
    fields = {
        f"{group}.{name}" if group else name: next(values)
        for group, names in _LAYOUTS[major_minor]
        for name in names
    }
    offsets = DebugOffsets(version, bool(fields["free_threaded"]), fields)
    _check_plausible(offsets)
    return offsets


def _check_plausible(offsets: DebugOffsets) -> None:
    # Every offset we dereference must fall inside the struct it belongs to.
    inside = {
        "interpreter_state": ("id", "next", "threads_head", "threads_main"),
        "thread_state": ("next", "native_thread_id", "current_frame"),
    }
    problems = [
        f"{group}.{name}"
        for group, names in inside.items()
        for name in names
        if offsets[f"{group}.{name}"] + 8 > offsets[f"{group}.size"]
    ]
    support_end = (
        offsets["debugger_support.remote_debugger_support"]
        + offsets["debugger_support.debugger_script_path"]
        + offsets["debugger_support.debugger_script_path_size"]
    )
    breaker_end = offsets["debugger_support.eval_breaker"] + 8
    if max(support_end, breaker_end) > offsets["thread_state.size"]:
        problems.append("debugger_support")
    if offsets["debugger_support.remote_debugging_enabled"] + 4 > offsets["interpreter_state.size"]:
        problems.append("debugger_support.remote_debugging_enabled")
    if not 1 < offsets["debugger_support.debugger_script_path_size"] <= 4096:
        problems.append("debugger_support.debugger_script_path_size")
    if problems:
        raise NotPython(
            f"debug offsets of Python {offsets.version_text} look corrupt ({', '.join(problems)})",
            hint="the process may not be a standard CPython build; attach with gdb instead",
        )


_VERSIONED_NAME = re.compile(r"python(\d)\.(\d+)")


def version_from_filename(path: str) -> tuple[int, int] | None:
    """``/usr/lib/libpython3.12.so.1.0`` -> ``(3, 12)``: a guess where there are no offsets."""
    match = _VERSIONED_NAME.search(path.rsplit("/", 1)[-1])
    return (int(match[1]), int(match[2])) if match else None


@dataclass(frozen=True)
class ElfSection:
    """A section of an ELF file, with what is needed to find it in a process.

    In memory the section sits at ``load_address + addr - first_load_vaddr``, where
    `load_address` is where the file's offset-0 mapping starts.
    """

    addr: int
    offset: int
    size: int
    first_load_vaddr: int


_ELF_MAGIC = b"\x7fELF"
_ELFCLASS64, _ELFDATA2LSB, _PT_LOAD = 2, 1, 1


def find_elf_section(f: BinaryIO, name: str) -> ElfSection | None:
    """Look up section `name` (e.g. ``".PyRuntime"``) in a 64-bit little-endian ELF file.

    Returns None when the file is not such an ELF file or has no section of that name; this
    reads only the headers and the section-name table, not the whole (often 30 MB) file.
    """
    ident = _read_at(f, 0, 64)
    if len(ident) < 64 or ident[:4] != _ELF_MAGIC:
        return None
    if ident[4] != _ELFCLASS64 or ident[5] != _ELFDATA2LSB:
        return None  # 32-bit or big-endian: no platform we attach to
    phoff, shoff = struct.unpack_from("<QQ", ident, 32)
    phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", ident, 54)
    if shnum == 0 or shstrndx >= shnum or shentsize < 64 or phentsize < 56:
        return None
    sections = _read_at(f, shoff, shnum * shentsize)
    if len(sections) < shnum * shentsize:
        return None

    def section(index: int) -> tuple[int, int, int, int]:
        """(name index, addr, offset, size) of section `index`."""
        base = index * shentsize
        (name_index,) = struct.unpack_from("<I", sections, base)
        addr, offset, size = struct.unpack_from("<QQQ", sections, base + 16)
        return name_index, addr, offset, size

    _, _, strtab_offset, strtab_size = section(shstrndx)
    strtab = _read_at(f, strtab_offset, strtab_size)
    wanted = name.encode()
    for index in range(shnum):
        name_index, addr, offset, size = section(index)
        if strtab[name_index : name_index + len(wanted) + 1] == wanted + b"\0":
            first_load = _first_load_vaddr(f, phoff, phentsize, phnum)
            if first_load is None:
                return None
            return ElfSection(addr, offset, size, first_load)
    return None


def _first_load_vaddr(f: BinaryIO, phoff: int, phentsize: int, phnum: int) -> int | None:
    headers = _read_at(f, phoff, phnum * phentsize)
    for index in range(min(phnum, len(headers) // phentsize)):
        base = index * phentsize
        (p_type,) = struct.unpack_from("<I", headers, base)
        if p_type == _PT_LOAD:
            vaddr, _, _, _, align = struct.unpack_from("<QQQQQ", headers, base + 16)
            # The kernel maps whole pages, so the mapping starts at the aligned-down address.
            return int(vaddr - vaddr % align) if align else int(vaddr)
    return None


def _read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


# --- finding _PyRuntime in a live process ------------------------------------------------------


@dataclass(frozen=True)
class _Mapping:
    start: int
    offset: int
    span: str  # "start-end" as in /proc/PID/maps, the name of its /proc/PID/map_files entry
    path: str  # as the target's mount namespace sees it


def find_runtime(pid: int, read: Callable[[int, int], bytes]) -> tuple[int, int]:
    """(address of `_PyRuntime` in process `pid`, size of its ELF section).

    `read(address, size)` reads the process's memory: we accept a file only if the cookie is
    where its section headers say. Raises NotPython, UnsupportedPython (CPython 3.12 and older
    have no offsets), or OSError when /proc/PID/maps cannot be read.
    """
    maps = _read_maps(pid)
    exe = _readlink(f"/proc/{pid}/exe")
    without_offsets = ""
    for mapping in _file_starts(maps, exe):
        for elf_path in _host_paths(pid, mapping, exe):
            try:
                with open(elf_path, "rb") as elf:
                    section = find_elf_section(elf, ".PyRuntime")
            except OSError:
                continue
            if section is None:
                break  # e.g. the executable of a python linked against libpython.so
            address = mapping.start + section.addr - section.first_load_vaddr
            if read(address, len(COOKIE)) == COOKIE:
                return address, section.size
            without_offsets = mapping.path  # 3.12: the section exists, the offsets do not
    versions = [v for m in maps if (v := version_from_filename(m.path)) is not None]
    if without_offsets or versions:
        version = version_from_filename(without_offsets) or (versions[0] if versions else None)
        shown = f"Python {version[0]}.{version[1]}" if version else "a CPython older than 3.13"
        raise UnsupportedPython(
            f"PID {pid} runs {shown}, which has no remote execution (PEP 768 is new in 3.14)",
            hint="attach with gdb instead",
        )
    raise NotPython(f"PID {pid} is not a CPython process", hint="check the PID")


def _read_maps(pid: int) -> list[_Mapping]:
    with open(f"/proc/{pid}/maps") as maps:
        lines = maps.read().splitlines()
    mappings = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            span = fields[0]
            mappings.append(
                _Mapping(int(span.split("-")[0], 16), int(fields[2], 16), span, fields[5])
            )
    return mappings


def _file_starts(maps: list[_Mapping], exe: str | None) -> Iterator[_Mapping]:
    """The offset-0 mapping of every file that may hold _PyRuntime: the executable (it may
    embed libpython under any name) and whatever is called *python* (libpython3.14.so)."""
    seen: set[str] = set()
    for mapping in maps:
        name = mapping.path.rsplit("/", 1)[-1]
        wanted = mapping.path == exe or "python" in name
        if wanted and mapping.offset == 0 and mapping.path not in seen:
            seen.add(mapping.path)
            yield mapping


def _host_paths(pid: int, mapping: _Mapping, exe: str | None) -> Iterator[str]:
    if mapping.path == exe:
        yield f"/proc/{pid}/exe"  # the very file the process runs, whatever its namespace
    # /proc/PID/root reaches into the target's mount namespace (a container) with ptrace
    # rights alone; map_files also finds deleted or replaced files but needs CAP_SYS_ADMIN.
    if not mapping.path.endswith(" (deleted)"):
        yield f"/proc/{pid}/root{mapping.path}"
    yield f"/proc/{pid}/map_files/{mapping.span}"


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None
