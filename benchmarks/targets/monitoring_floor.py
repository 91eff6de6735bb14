"""The floor of any sys.monitoring tracer: TARGET run under the events async-inspect's agent
asks for, on the code it would trace, with callbacks that do nothing.

The agent enables PY_START everywhere (returning DISABLE for code it does not trace),
PY_RESUME, PY_YIELD and PY_RETURN on each traced coroutine's code, and PY_THROW and
PY_UNWIND everywhere (those cannot be enabled per code object). This does the same, and
decides the same way what is traced by default (`async def` functions outside the standard
library and site-packages), but each callback returns at once: what CPython's dispatch of
those events costs by itself, below which no tracer built on them can go. Standard library
only (runs on any CPython 3.12+).

Usage: monitoring_floor.py TARGET [ARGS...]   (TARGET runs as __main__, with ARGS)
"""

from __future__ import annotations

import os
import runpy
import sys
import sysconfig
from types import CodeType

CO_COROUTINE = 0x0080
M = sys.monitoring
E = M.events
TOOL = M.PROFILER_ID
LIBRARY = tuple(
    {os.path.realpath(path) + os.sep for path in sysconfig.get_paths().values()}
    | {path + os.sep for path in sysconfig.get_paths().values()}
)
traced: set[CodeType] = set()


def traces(code: CodeType) -> bool:
    """The agent's default choice: application coroutines."""
    name = code.co_filename
    library = name.startswith(LIBRARY) or name.startswith("<") or "-packages/" in name
    return bool(code.co_flags & CO_COROUTINE) and not library


def on_start(code: CodeType, offset: int) -> object:
    if code in traced:
        return None
    if traces(code):
        traced.add(code)
        M.set_local_events(TOOL, code, E.PY_RESUME | E.PY_YIELD | E.PY_RETURN)
        return None
    return M.DISABLE


def nothing(*args: object) -> None:
    return None


def install() -> None:
    M.use_tool_id(TOOL, "monitoring-floor")
    M.register_callback(TOOL, E.PY_START, on_start)
    for event in (E.PY_RESUME, E.PY_YIELD, E.PY_RETURN, E.PY_THROW, E.PY_UNWIND):
        M.register_callback(TOOL, event, nothing)
    M.set_events(TOOL, E.PY_START | E.PY_THROW | E.PY_UNWIND)


if __name__ == "__main__":
    target = os.path.abspath(sys.argv[1])
    sys.argv = [target, *sys.argv[2:]]
    sys.path.insert(0, os.path.dirname(target))  # the targets import their neighbours
    install()
    runpy.run_path(target, run_name="__main__")
