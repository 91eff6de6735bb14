"""A tracer that does nothing: TARGET run under the events async-inspect's agent asks for, on
the code it would trace, with Python callbacks that return at once.

The agent enables PY_START everywhere (returning DISABLE for code it does not trace),
PY_RESUME, PY_YIELD and PY_RETURN on each traced coroutine's code, and PY_THROW and
PY_UNWIND everywhere (those cannot be enabled per code object). This does the same, and
decides the same way what is traced by default (`async def` functions outside the standard
library and site-packages), with callbacks that do nothing: what a pure-Python tracer on
these events cannot go below. (The agent's callbacks are compiled; calling a C callback costs
CPython less than calling a Python function, so this is not a floor for them:
benchmarks.callbacks_cost counts both.) Standard library only (runs on any CPython 3.12+).

With --steps it measures another design instead: PY_START and PY_RETURN only on the traced
code, plus PY_START and PY_RETURN of asyncio's Handle._run (one pair per loop callback, so
per task step), where a span's polls and busy time would come from its task's steps rather
than from every coroutine's resumes and yields.

Usage: noop_tracer.py [--steps] TARGET [ARGS...]   (TARGET runs as __main__, with ARGS)
"""

from __future__ import annotations

import asyncio.events
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
traced: set[int] = set()  # ids: hashing a code object hashes its constants, every time
per_coroutine = E.PY_RESUME | E.PY_YIELD | E.PY_RETURN  # --steps: E.PY_RETURN


def traces(code: CodeType) -> bool:
    """The agent's default choice: application coroutines."""
    name = code.co_filename
    library = name.startswith(LIBRARY) or name.startswith("<") or "-packages/" in name
    return bool(code.co_flags & CO_COROUTINE) and not library


def on_start(code: CodeType, offset: int) -> object:
    if id(code) in traced:
        return None
    if traces(code):
        traced.add(id(code))  # the code object lives on: its function holds it
        M.set_local_events(TOOL, code, per_coroutine)
        return None
    return M.DISABLE


def nothing(*args: object) -> None:
    return None


def install(steps: bool) -> None:
    global per_coroutine
    M.use_tool_id(TOOL, "noop-tracer")
    M.register_callback(TOOL, E.PY_START, on_start)
    for event in (E.PY_RESUME, E.PY_YIELD, E.PY_RETURN, E.PY_THROW, E.PY_UNWIND):
        M.register_callback(TOOL, event, nothing)
    M.set_events(TOOL, E.PY_START | E.PY_THROW | E.PY_UNWIND)
    if steps:
        per_coroutine = E.PY_RETURN
        step = asyncio.events.Handle._run.__code__
        traced.add(id(step))  # on_start lets it through
        M.set_local_events(TOOL, step, E.PY_START | E.PY_RETURN)


if __name__ == "__main__":
    steps = sys.argv[1] == "--steps"
    target = os.path.abspath(sys.argv[2 if steps else 1])
    sys.argv = [target, *sys.argv[(3 if steps else 2) :]]
    sys.path.insert(0, os.path.dirname(target))  # the targets import their neighbours
    install(steps)
    runpy.run_path(target, run_name="__main__")
