"""Reading `.PyRuntime` and `_Py_DebugOffsets` from interpreter files on disk, and refusing
layouts we do not know. The section's initial bytes in the file are the offsets themselves."""

from __future__ import annotations

import io
import os
import struct
import sys
import sysconfig
from pathlib import Path

import pytest

from profiler.attach._debug_offsets import (
    COOKIE,
    HEADER_SIZE,
    ElfSection,
    find_elf_section,
    format_version,
    layout_size,
    parse_debug_offsets,
    parse_header,
    version_from_filename,
)
from profiler.errors import NotPython, UnsupportedPython

PY314 = Path("/opt/python3.14/usr/bin/python3.14")
needs_314 = pytest.mark.skipif(not PY314.exists(), reason=f"no Python 3.14 at {PY314}")
V3_14_10 = 0x030E0AF0


def section_bytes(path: Path, section: ElfSection, size: int) -> bytes:
    with path.open("rb") as f:
        f.seek(section.offset)
        return f.read(size)


def running_interpreter_files() -> list[Path]:
    """The executable and libpython of the Python running these tests."""
    files = [Path(os.path.realpath(sys.executable))]
    if soname := sysconfig.get_config_var("INSTSONAME"):
        files.append(Path(sysconfig.get_config_var("LIBDIR")) / soname)
    return [path for path in files if path.is_file()]


def synthetic(version: int, **overrides: int) -> bytes:
    """A 3.14-shaped `_Py_DebugOffsets` with plausible numbers, as the start of _PyRuntime."""
    raw = bytearray(COOKIE + struct.pack("<QQ", version, 0) + bytes(760 - HEADER_SIZE - 8))
    plausible = {
        "interpreter_state.size": 200_000,
        "thread_state.size": 900,
        "debugger_support.debugger_script_path_size": 512,
        **overrides,
    }
    index = {"interpreter_state.size": 5, "thread_state.size": 21}
    index["debugger_support.debugger_script_path_size"] = 93
    for name, value in plausible.items():
        struct.pack_into("<Q", raw, 8 + 8 * index[name], value)
    return bytes(raw)


# --- the ELF section ------------------------------------------------------------------------------


@needs_314
def test_finds_pyruntime_in_statically_linked_314_executable() -> None:
    with PY314.open("rb") as f:
        section = find_elf_section(f, ".PyRuntime")
    assert section is not None
    assert section.size > 100_000  # _PyRuntimeState is large
    assert section_bytes(PY314, section, len(COOKIE)) == COOKIE


def test_pyruntime_of_the_interpreter_running_the_tests() -> None:
    # GIVEN the files of this interpreter (3.12 or newer): exactly one holds .PyRuntime
    sections = {}
    for path in running_interpreter_files():
        with path.open("rb") as f:
            if (section := find_elf_section(f, ".PyRuntime")) is not None:
                sections[path] = section
    assert len(sections) == 1
    # THEN 3.12 has the section but no offsets in it; 3.13+ start it with the cookie
    ((path, section),) = sections.items()
    header = section_bytes(path, section, HEADER_SIZE)
    if sys.version_info < (3, 13):
        with pytest.raises(UnsupportedPython, match=r"older than 3\.13"):
            parse_header(header)
    else:
        assert parse_header(header) == sys.hexversion


def test_other_files_have_no_pyruntime(tmp_path: Path) -> None:
    elf = Path("/bin/sh").resolve()
    with elf.open("rb") as f:
        assert find_elf_section(f, ".PyRuntime") is None
    with open(__file__, "rb") as f:
        assert find_elf_section(f, ".PyRuntime") is None
    with elf.open("rb") as f:
        truncated = io.BytesIO(f.read(64))
    assert find_elf_section(truncated, ".PyRuntime") is None
    assert find_elf_section(io.BytesIO(b""), ".PyRuntime") is None


# --- the debug offsets ----------------------------------------------------------------------------


@needs_314
def test_parses_the_debug_offsets_of_314() -> None:
    with PY314.open("rb") as f:
        section = find_elf_section(f, ".PyRuntime")
    assert section is not None
    raw = section_bytes(PY314, section, layout_size(V3_14_10))
    offsets = parse_debug_offsets(raw)
    assert (offsets.version >> 16, offsets.version_text[:5]) == (0x030E, "3.14.")
    assert offsets.free_threaded is False
    assert offsets["runtime_state.size"] == section.size
    # The PEP 768 fields: a 512-byte path after a 4-byte flag, inside the thread state.
    assert offsets["debugger_support.debugger_pending_call"] == 0
    assert offsets["debugger_support.debugger_script_path"] == 4
    assert offsets["debugger_support.debugger_script_path_size"] == 512
    support_end = offsets["debugger_support.remote_debugger_support"] + 4 + 512
    assert support_end <= offsets["thread_state.size"]
    # Fields we follow as pointers are 8-byte aligned, as they must be in the real structs.
    for name in ("interpreter_state.threads_main", "thread_state.next", "thread_state.interp"):
        assert offsets[name] % 8 == 0


def test_layout_size_covers_94_fields_for_314() -> None:
    assert layout_size(V3_14_10) == len(COOKIE) + 94 * 8


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (0x030D00F0, "Python 3.13.0 has no remote execution"),
        (0x030C04F0, "Python 3.12.4 has no remote execution"),
        (0x030F00F0, "layout of Python 3.15.0 is unknown"),
        (0x030E00B2, "Python 3.14.0b2 is a pre-release"),
        (0x030E00C1, "Python 3.14.0rc1 is a pre-release"),
    ],
)
def test_refuses_layouts_it_does_not_know(version: int, message: str) -> None:
    with pytest.raises(UnsupportedPython, match=message) as raised:
        parse_debug_offsets(synthetic(version))
    assert "gdb" in raised.value.hint


def test_refuses_missing_cookie() -> None:
    with pytest.raises(UnsupportedPython):
        parse_header(b"\0" * HEADER_SIZE)
    with pytest.raises(UnsupportedPython):
        parse_header(COOKIE)  # too short to hold the version


def test_accepts_plausible_and_refuses_corrupt_offsets() -> None:
    assert parse_debug_offsets(synthetic(V3_14_10)).version_text == "3.14.10"
    no_path = {"debugger_support.debugger_script_path_size": 0}
    with pytest.raises(NotPython, match="debugger_script_path_size"):
        parse_debug_offsets(synthetic(V3_14_10, **no_path))
    with pytest.raises(NotPython, match=r"\(debugger_support\)"):
        parse_debug_offsets(synthetic(V3_14_10, **{"thread_state.size": 8}))
    with pytest.raises(ValueError, match="need 760 bytes"):
        parse_debug_offsets(synthetic(V3_14_10)[:100])


def test_versions_for_messages() -> None:
    assert format_version(V3_14_10) == "3.14.10"
    assert format_version(0x030E00A7) == "3.14.0a7"
    assert version_from_filename("/usr/lib/x86_64-linux-gnu/libpython3.12.so.1.0") == (3, 12)
    assert version_from_filename("/opt/python3.14/usr/bin/python3.14") == (3, 14)
    assert version_from_filename("/opt/python3.14/usr/bin/app") is None
