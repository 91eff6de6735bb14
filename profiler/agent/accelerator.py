"""The compiled callbacks, when this process can load them; the pure-Python ones otherwise.

`_accel` is a C extension built by the package's own build from `csrc/` against the limited
API of 3.12, so one binary serves every CPython from 3.12 on. An `AcceleratedTracker` is a
`Tracker` whose six sys.monitoring callbacks are `_accel.Hooks` methods working on the
tracker's own containers. Its spans are `_accel.Span` objects: C fields (no int object per
value), which Python reads and writes by position like the spans.Span lists, so the
sender, the in-flight flush and the tests see no difference. What happens once per code
object, task, loop or error stays in Tracker's Python (the C calls back into it), and so do
adoption and `in_flight`.

Loading never fails the agent: not built, not loadable here (another libc, architecture,
a free-threaded build, a folder mounted noexec...), a stale binary, or
ASYNC_INSPECT_ACCELERATOR=0 all give the plain `Tracker`, with the reason in HELLO.
In a target the bootstrap provides `_accel` (see bootstrap.py); it must be imported while
the agent's package is being loaded, hence at the top of this module.
"""

from __future__ import annotations

import asyncio
import os
import sys
import sysconfig
from collections.abc import Callable
from random import random
from types import CodeType, CoroutineType, FrameType, ModuleType
from typing import TYPE_CHECKING, Any

from .. import wire
from . import spans as S
from .app_trace import app_otel_parent
from .codefilter import CodeFilter
from .meters import SLOW_STEP_NS
from .settings import ACCELERATOR_ENV, AgentSettings, accelerator_disabled
from .taskbook import _LOOP_RUNNER
from .tracker import Tracker, callbacks_of

if TYPE_CHECKING:
    from ._accel import Hooks

__all__ = ["AcceleratedTracker", "available", "new_tracker"]

ABI_VERSION = 8  # what _accel.ABI_VERSION must be: bumped with csrc/accel.c's interface
# Flags of the C code table (csrc/tables.h); checked with the span layout.
CODE_WAKE, CODE_CAPTURE, CODE_RATE, CODE_REJECTED = 2, 4, 8, 64
_CLOCKSOURCE = "/sys/devices/system/clocksource/clocksource0/current_clocksource"


def _load() -> tuple[ModuleType | None, str]:
    if accelerator_disabled(os.environ):
        return None, f"disabled by {ACCELERATOR_ENV}=0"
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        return None, "free-threaded CPython: the binary is built for the GIL's ABI"
    try:
        from . import _accel
    except Exception as exc:  # not built, or not loadable in this process: pure Python
        return None, f"not loaded: {exc}" if str(exc) else f"not loaded: {type(exc).__name__}"
    version = getattr(_accel, "ABI_VERSION", None)
    if version != ABI_VERSION:
        return None, f"stale binary (ABI {version}, this agent needs {ABI_VERSION})"
    where = getattr(_accel.__spec__, "loader_state", None)  # set by the bootstrap
    return _accel, f"compiled callbacks ({where})" if where else "compiled callbacks"


_ACCEL, _DETAIL = _load()


def available() -> tuple[bool, str]:
    """(whether the compiled callbacks loaded in this process, why or why not)."""
    return _ACCEL is not None, _DETAIL


def new_tracker(settings: AgentSettings, code_filter: CodeFilter, tool: int) -> tuple[Tracker, str]:
    """The tracker for this process, accelerated when allowed and possible, and one line
    saying which and why (reported in HELLO)."""
    if not settings.accelerator:
        return Tracker(settings, code_filter, tool), f"disabled by {ACCELERATOR_ENV}=0 on the host"
    if _ACCEL is None:
        return Tracker(settings, code_filter, tool), _DETAIL
    try:
        return AcceleratedTracker(settings, code_filter, tool, _ACCEL), _DETAIL
    except Exception as exc:  # e.g. a layout the binary was not compiled for
        return Tracker(settings, code_filter, tool), f"not used: {exc}"


def _counter_trusted() -> bool:
    """Whether the kernel's own clock is the time-stamp counter: then it found the counter
    invariant and in step across CPUs, and the compiled callbacks may read it (clock.c)."""
    try:
        with open(_CLOCKSOURCE) as file:
            return file.read().strip() == "tsc"
    except OSError:
        return False


def _layout() -> dict[str, int]:
    names = (
        "ID", "PARENT_ID", "TRACE", "TASK", "CODE", "THREAD", "START", "END", "STATE", "POLLS",
        "BUSY", "EVENTS", "EVENTS_DROPPED", "ERROR", "TASK_NAME", "PARENT_TASK", "LINK",
        "REMOTE", "FLAGS", "ATTRS", "RESUMED", "PARENT", "CHILD", "SAMPLED", "TASK_INFO",
        "BLOCKED_AT",
    )  # fmt: skip
    layout = {name: getattr(S, name) for name in names}
    layout["SPAN_LEN"] = S.FIELDS
    for name in ("POLL", "WAKE", "BLOCKED", "COMPLETED", "FAILED", "CANCELLED"):
        layout["EVENT_" + name] = getattr(wire, "EVENT_" + name)
    for name in ("COMPLETED", "FAILED", "CANCELLED", "RUNNING"):
        layout["STATE_" + name] = getattr(wire, "STATE_" + name)
    layout["FLAG_TASK_ROOT"] = wire.FLAG_TASK_ROOT
    layout["FLAG_START_UNKNOWN"] = wire.FLAG_START_UNKNOWN
    layout.update(CODE_WAKE=CODE_WAKE, CODE_CAPTURE=CODE_CAPTURE, CODE_RATE=CODE_RATE)
    layout["CODE_REJECTED"] = CODE_REJECTED
    layout["WIRE_FIELDS"] = wire.SPAN_FIELDS
    return layout


class AcceleratedTracker(Tracker):
    """A Tracker whose sys.monitoring callbacks are compiled (`_accel.Hooks`).

    The C keeps a table of traced code objects (filled by `consider`), the wake time of
    each thread, and the span meters as deltas that `metrics` merges into `meters`. Its
    TaskInfo (`_accel.TaskInfo`) has the attributes and `name()` of spans.TaskInfo; the C
    gives one to every task, and its weak reference callback forgets the task, but to a
    task the factory did not see while it has its default name `Task-N`: its spans keep a
    weak reference to it instead, and its id is 2N (tasks.c: unseen_task_info).
    """

    def __init__(
        self, settings: AgentSettings, code_filter: CodeFilter, tool: int, accel: ModuleType
    ) -> None:
        super().__init__(settings, code_filter, tool)
        # The open spans by frame: a dict's protocol, keyed by address in C (spanmap.c).
        self.open = accel.SpanMap()
        # The TaskInfo of each task by the task's address (not a reference, nor an int key
        # object per task): the C forgets an entry when its task's weak reference says so.
        self._task_infos = accel.SpanMap(weak_keys=True)
        config: dict[str, Any] = {
            "disable": sys.monitoring.DISABLE,
            "task_type": asyncio.Task,
            "cancelled": (asyncio.CancelledError, GeneratorExit),
            "coroutine_type": CoroutineType,
            "frame_type": FrameType,
            "loop_runner": _LOOP_RUNNER,
            "get_running_loop": asyncio.events._get_running_loop,
            "current_task": asyncio.current_task,
            "random": random,
            "otel_parent": app_otel_parent,
            "split_ns": self._split_ns,
            "max_open": self._max_open,
            "max_buffer": self._max_buffer,
            "max_event_items": self._max_event_items,
            "parent_based": int(settings.parent_based),
            "ratio": float(self._ratio),
            "bounds": wire.SPAN_BOUNDS_NS,
            "slow_ns": SLOW_STEP_NS,
        }
        self._hooks: Hooks = accel.Hooks(self, _layout(), config)
        self.now = self._hooks.now
        self._accel = accel
        accel.clock_allow(_counter_trusted())
        # One span id sequence for the C and for Tracker._open (adoption), and one kind of
        # span: what Python opens is a compiled Span too.
        self._span_ids = self._hooks.next_span_id
        span_type = accel.Span
        self._new_span = lambda *fields: span_type(S.new_span(*fields))
        self._named_task = self._hooks.task_name_by_ref

    @property
    def tasks_seen(self) -> int:
        """Tasks given a TaskInfo (all by the C)."""
        return self._hooks.tasks_seen if hasattr(self, "_hooks") else 0

    @tasks_seen.setter
    def tasks_seen(self, value: int) -> None:
        pass  # Tracker.__init__ sets 0; the C counts

    def callbacks(self) -> dict[int, Callable[..., object]]:
        """The compiled callback of each event."""
        return callbacks_of(self._hooks)

    def consider(self, code: CodeType, module: str) -> int | None:
        """As Tracker.consider; a traced code is also entered in the C code table."""
        code_id = super().consider(code, module)
        if code_id is not None:
            flags = (CODE_CAPTURE if code_id in self._captures else 0) | (
                CODE_RATE if code_id in self._code_rates else 0
            )
            self._hooks.add_code(code, code_id, flags)
        return code_id

    def _reject(self, code: CodeType) -> None:
        super()._reject(code)
        if id(code) in self._rejected:
            self._hooks.add_code(code, 0, CODE_REJECTED)

    def _consider_at_start(self, code: CodeType, frame: FrameType) -> int | None:
        # Called by the C on_start the first time it sees `code`.
        return self.consider(code, frame.f_globals.get("__name__", "?"))

    def watch_selector_wakeups(self) -> None:
        """As Tracker.watch_selector_wakeups, with the select() codes entered in C."""
        super().watch_selector_wakeups()
        for code in self._codes:
            if id(code) in self._wake_codes:
                self._hooks.add_code(code, 0, CODE_WAKE)

    def task_created(self, coro: Any, task_creator_frame: FrameType | None) -> S.TaskInfo:
        """As Tracker.task_created (in C)."""
        return self._hooks.task_created(coro, task_creator_frame)

    def task_bound(self, info: S.TaskInfo, task: Any, coro: Any) -> None:
        """As Tracker.task_bound (in C; the task's weak reference calls back into C)."""
        self._hooks.task_bound(info, task, coro)

    def info_for(self, task: Any) -> S.TaskInfo:
        """As Tracker.info_for (in C)."""
        return self._hooks.info_for(task)

    def task_counts(self) -> tuple[int, int, int]:
        """As Tracker.task_counts (in C)."""
        return self._hooks.task_counts()

    def spans_frame(self, spans: list[S.Span]) -> bytes:
        """As Tracker.spans_frame, the body written in C (Python's for an unusual value)."""
        body = self._hooks.marshal_spans(spans)
        if body is None:
            return super().spans_frame(spans)
        return wire.frame_of(wire.SPANS, body)

    def drop_counts(self) -> dict[str, int]:
        """As Tracker.drop_counts, with the C's count of full-buffer drops merged in."""
        full = self._hooks.take_dropped()
        if full:
            self.dropped["buffer_full"] = self.dropped.get("buffer_full", 0) + full
        return super().drop_counts()

    def tick_clock(self) -> None:
        """Refit the compiled callbacks' clock to CLOCK_MONOTONIC (clock.c)."""
        self._accel.clock_tick()

    def _became_running(self) -> None:
        self._hooks.running += 1  # the C's count of running spans (Hooks.running)

    def metrics(self) -> dict[str, Any]:
        """The meters' snapshot, with what the C counted since the last one merged in."""
        self.meters.merge(*self._hooks.take_meters())
        return super().metrics()

    def _forget_running(self) -> None:
        # Hooks.reset forgets the running count and the last chain time, and with them
        # the wake times and meters: the meters are merged first.
        self.meters.merge(*self._hooks.take_meters())
        self._hooks.reset()

    def clear(self) -> None:
        """As Tracker.clear, the C's wake times and counts included."""
        super().clear()
        self._hooks.reset()
