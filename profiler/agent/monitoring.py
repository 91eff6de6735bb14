"""Claiming a sys.monitoring tool id and wiring the tracker's callbacks to it.

Only PY_START is enabled globally; PY_RESUME/PY_YIELD/PY_RETURN are enabled per code
object by the tracker once it decides to trace that code, and every other code object
pays for one PY_START callback returning DISABLE. PY_UNWIND and PY_THROW cannot be local.
"""

from __future__ import annotations

import sys
import threading
from types import CodeType

from .tracker import Tracker

__all__ = ["PREFERRED_TOOL_IDS", "Installation", "NoFreeToolId", "claim_tool_id"]

_mon = sys.monitoring
_E = _mon.events
# PROFILER_ID first, then the ids nobody reserved. Never DEBUGGER_ID (0) or COVERAGE_ID (1):
# a debugger or coverage started after us expects to find its own id free.
PREFERRED_TOOL_IDS = (_mon.PROFILER_ID, 3, 4, _mon.OPTIMIZER_ID)
GLOBAL_EVENTS = _E.PY_START | _E.PY_UNWIND | _E.PY_THROW


class NoFreeToolId(RuntimeError):
    """Every tool id we may use belongs to another tool."""


def claim_tool_id(name: str) -> int:
    """Reserve the first free preferred tool id under `name`; never touch a taken one."""
    owners = []
    for tool in PREFERRED_TOOL_IDS:
        owner = _mon.get_tool(tool)
        if owner is None:
            try:
                _mon.use_tool_id(tool, name)
            except ValueError:  # claimed between our look and our claim
                owner = _mon.get_tool(tool)
            else:
                return tool
        owners.append(f"{tool}={owner}")
    raise NoFreeToolId("every sys.monitoring tool id we may use is taken: " + ", ".join(owners))


class Installation:
    """The tracker's callbacks registered on a tool id; `remove` undoes all of it. Between
    bursts (bursts.py) `pause` switches every event off and `resume` on again; the lock
    keeps a burst from switching them on after (or during) `remove` on another thread."""

    def __init__(self, tool: int, tracker: Tracker) -> None:
        self.tool = tool
        self.tracker = tracker
        self.active = False
        self._lock = threading.Lock()

    def install(self) -> None:
        """Register the callbacks (Python or compiled: the tracker's) and enable the global
        events."""
        for event, callback in self.tracker.callbacks().items():
            _mon.register_callback(self.tool, event, callback)
        _mon.set_events(self.tool, GLOBAL_EVENTS)
        self.active = True

    def pause(self) -> bool:
        """Switch every event off, global and local (callbacks stay registered); False if
        removed already."""
        with self._lock:
            if not self.active:
                return False
            self._events_off()
            return True

    def resume(self) -> bool:
        """Switch the events `pause` switched off on again; False if removed already."""
        with self._lock:
            if not self.active:
                return False
            self.tracker.enable_local_events()
            _mon.set_events(self.tool, GLOBAL_EVENTS)
            return True

    def remove(self) -> None:
        """Disable every event (global and local), unregister callbacks, free the tool id."""
        with self._lock:
            if not self.active:
                return
            self.active = False
            self._events_off()
            for event in (_E.PY_START, _E.PY_RESUME, _E.PY_THROW, _E.PY_YIELD, _E.PY_RETURN,
                          _E.PY_UNWIND):  # fmt: skip
                _mon.register_callback(self.tool, event, None)
            clear = getattr(_mon, "clear_tool_id", None)  # 3.13+
            if clear is not None:
                clear(self.tool)
            # The DISABLE marks our callbacks returned outlive free_tool_id (and
            # clear_tool_id): the next owner of this id (cProfile uses PROFILER_ID) would
            # silently miss those calls. restart_events is the only way to lift them; tools
            # still running just see each location once more and disable it again.
            _mon.restart_events()
            _mon.free_tool_id(self.tool)

    def _events_off(self) -> None:
        _mon.set_events(self.tool, 0)
        for code in self.tracker.local_codes():
            _clear_local(self.tool, code)


def _clear_local(tool: int, code: CodeType) -> None:
    try:
        _mon.set_local_events(tool, code, 0)
    except ValueError:  # the code object is gone from under us (never in practice)
        pass
