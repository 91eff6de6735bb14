"""Pure logic of profiler.attach: ELF reading against the interpreters on disk, version and
option parsing, ptrace diagnostics, and the wrapper that keeps injected code's errors inside."""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

import pytest

from profiler.attach import PtraceAccess, elf, inspect_process
from profiler.attach.gdb import _PROTOTYPES, _bootstrap
from profiler.attach.process import _decode_py_version, _disables_remote_debug, _state_from_stat


def _interpreter_modules() -> list[tuple[str, str]]:
    """(ELF holding the interpreter, "X.Y" or "X.Y.Z") for every CPython found on this machine."""
    found = []
    for prefix in sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[1-9].*"))):
        version = os.path.basename(prefix)
        library = Path(prefix, "lib", f"libpython{version.rsplit('.', 1)[0]}.so.1.0")
        found.append(
            (str(library), version) if library.exists() else (f"{prefix}/bin/python", version)
        )
    for exe in glob.glob("/opt/python3.1[2-9]/usr/bin/python3.1[2-9]"):
        found.append((exe, os.path.basename(exe).removeprefix("python")))
    return found


MODULES = [pytest.param(path, version, id=version) for path, version in _interpreter_modules()]


@pytest.mark.skipif(not MODULES, reason="no CPython 3.11+ installed where these tests look")
@pytest.mark.parametrize(("path", "version"), MODULES)
def test_py_version_is_read_from_dynsym_of_the_file(path: str, version: str) -> None:
    symbols = elf.dynamic_symbols(path, ["Py_Version", "Not_A_Symbol"])
    assert set(symbols) == {"Py_Version"}
    raw = elf.read_at_vaddr(path, symbols["Py_Version"].value, 4)
    decoded = _decode_py_version(int.from_bytes(raw, "little"))
    assert decoded is not None
    assert ".".join(map(str, decoded)).startswith(version)


@pytest.mark.skipif(not MODULES, reason="no CPython 3.11+ installed where these tests look")
@pytest.mark.parametrize(("path", "version"), MODULES)
def test_every_function_the_gdb_script_uses_is_exported(path: str, version: str) -> None:
    if version < "3.12":
        pytest.skip("only 3.12+ is supported")
    symbols = elf.dynamic_symbols(path, _PROTOTYPES)
    assert set(symbols) == set(_PROTOTYPES)
    assert all(symbol.size > 0 for symbol in symbols.values())


def test_load_bias_for_a_shared_library_and_a_fixed_address_executable() -> None:
    library = next((p for p, _ in _interpreter_modules() if p.endswith(".so.1.0")), None)
    if library is None:
        pytest.skip("no libpython here")
    assert elf.load_bias(library, 0x7F00_0000_0000, 0) == 0x7F00_0000_0000
    debian_314 = "/opt/python3.14/usr/bin/python3.14"  # non-PIE: its first segment is at 0x3ff000
    if os.path.exists(debian_314):
        assert elf.load_bias(debian_314, 0x3FF000, 0) == 0
        assert elf.load_bias(debian_314, 0x400000, 0x1000) == 0


def test_files_that_are_not_elf(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(elf.ElfError, match="not an ELF file"):
        elf.dynamic_symbols(str(script), ["Py_Version"])
    truncated = tmp_path / "truncated"
    truncated.write_bytes(b"\x7fELF\x02\x01\x01")
    with pytest.raises(elf.ElfError, match="truncated"):
        elf.dynamic_symbols(str(truncated), ["Py_Version"])


@pytest.mark.parametrize(
    ("hex_version", "expected"),
    [
        (0x030C01F0, (3, 12, 1)),
        (0x030D00F0, (3, 13, 0)),
        (0x030E0AF0, (3, 14, 10)),
        (0x030E00A3, (3, 14, 0)),  # 3.14.0a3
        (0x020718F0, None),
        (0, None),
        (0x1_030C01F0, None),  # garbage above the 32 bits PY_VERSION_HEX uses
    ],
)
def test_decode_py_version(hex_version: int, expected: tuple[int, int, int] | None) -> None:
    assert _decode_py_version(hex_version) == expected


DISABLED = [b"PYTHON_DISABLE_REMOTE_DEBUG=1"]


@pytest.mark.parametrize(
    ("argv", "environ", "disabled"),
    [
        (["python3.14", "app.py"], [], False),
        (["python3.14", "-X", "disable_remote_debug", "app.py"], [], True),
        (["python3.14", "-Xdisable_remote_debug", "-m", "app"], [], True),
        (["python3.14", "-W", "ignore", "-X", "disable_remote_debug"], [], True),
        (["python3.14", "-X", "dev", "app.py", "-X", "disable_remote_debug"], [], False),
        (["python3.14", "-c", "pass", "-X", "disable_remote_debug"], [], False),
        (["python3.14", "app.py"], DISABLED, True),
        (["python3.14", "app.py"], [b"PYTHON_DISABLE_REMOTE_DEBUG="], False),
        (["python3.14", "-E", "app.py"], DISABLED, False),
        (["python3.14", "-sI", "app.py"], DISABLED, False),
        (["python3.14", "app.py", "-E"], DISABLED, True),
    ],
)
def test_remote_debug_switches(argv: list[str], environ: list[bytes], disabled: bool) -> None:
    assert _disables_remote_debug(argv, environ) is disabled


def test_state_survives_parentheses_in_the_command_name() -> None:
    assert _state_from_stat(b"4242 (evil) R (name) T 1 4242 4242 0") == "T"


def test_this_process_is_described() -> None:
    info = inspect_process(os.getpid())
    assert info.version == sys.version_info[:3]
    assert info.version_source == "Py_Version"
    assert info.version_str == "{}.{}.{}".format(*sys.version_info[:3])
    assert not info.other_mount_ns and not info.stopped and not info.remote_debug_disabled
    assert elf.dynamic_symbols(info.python_module, ["Py_Initialize"])


def test_ptrace_problems_name_each_reason() -> None:
    fine = PtraceAccess(
        pid=7, ptrace_scope=1, has_cap_sys_ptrace=True, same_uid=False, tracer_pid=0
    )
    assert fine.problems == ()
    blocked = PtraceAccess(
        pid=7, ptrace_scope=2, has_cap_sys_ptrace=False, same_uid=False, tracer_pid=9
    )
    assert blocked.problems == (
        "PID 7 is already traced by PID 9",
        "kernel.yama.ptrace_scope=2 requires CAP_SYS_PTRACE",
        "PID 7 belongs to another user",
    )
    locked = PtraceAccess(
        pid=7, ptrace_scope=3, has_cap_sys_ptrace=True, same_uid=True, tracer_pid=0
    )
    assert locked.problems == ("kernel.yama.ptrace_scope=3 forbids ptrace until reboot",)


@pytest.mark.parametrize(
    "code",
    [
        "raise SystemExit(3)",
        'x = \'quotes " \\\' """ and a\\nnewline\'\nraise ValueError(x)',
        "s = 'caf\\u00e9 \\x00 \\U0001f40d'\nraise KeyError(s)",
        "def f(:\n",
    ],
)
def test_bootstrap_keeps_every_error_inside(code: str) -> None:
    namespace: dict[str, object] = {}
    exec(_bootstrap(code), namespace)  # exactly what PyRun_String does in the target
    error = namespace["__async_inspect_error__"]
    assert isinstance(error, str) and error.split(":")[0] in (
        "SystemExit",
        "ValueError",
        "KeyError",
        "SyntaxError",
    )
    assert set(namespace) == {"__builtins__", "__async_inspect_error__"}


def test_bootstrap_runs_code_in_a_namespace_of_its_own() -> None:
    namespace: dict[str, object] = {}
    exec(_bootstrap("import sys\nsys._async_inspect_probe = __name__"), namespace)
    assert sys.__dict__.pop("_async_inspect_probe") == "__async_inspect__"
    assert set(namespace) == {"__builtins__"}
