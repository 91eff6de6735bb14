"""A span under construction, and an asyncio task as the tracker knows it.

A span is a plain list, not an object: one is made for every traced coroutine call, and a
list literal costs a sixth of a slotted `__init__`. Positions 0..18 are exactly the wire
layout (`wire.SPAN_*`), so shipping a span is a slice; the rest is the agent's own state.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from .. import wire

__all__ = ["Span", "TaskInfo", "end_in_flight", "in_flight", "new_span", "to_wire"]

Span = list[Any]
# The name of a task the compiled tracker knows by its `Task-N` alone, from the weak reference
# its span keeps as TASK_INFO and its id (tasks.c: unseen_task_info, named_task_name).
TaskNamer = Callable[[Any, int], Any]

ID = wire.SPAN_ID
PARENT_ID = wire.SPAN_PARENT
TRACE = wire.SPAN_TRACE
TASK = wire.SPAN_TASK
CODE = wire.SPAN_CODE
THREAD = wire.SPAN_THREAD
START = wire.SPAN_START
END = wire.SPAN_END
STATE = wire.SPAN_STATE
POLLS = wire.SPAN_POLLS
BUSY = wire.SPAN_BUSY
EVENTS = wire.SPAN_EVENTS  # a flat list while open: kind, perf ns, detail, ...
EVENTS_DROPPED = wire.SPAN_EVENTS_DROPPED
ERROR = wire.SPAN_ERROR
TASK_NAME = wire.SPAN_TASK_NAME
PARENT_TASK = wire.SPAN_PARENT_TASK
LINK = wire.SPAN_LINK
REMOTE = wire.SPAN_REMOTE_PARENT
FLAGS = wire.SPAN_FLAGS
ATTRS = wire.SPAN_ATTRS
# Agent-only state:
RESUMED = 20  # perf ns of the current resume, 0 while suspended
PARENT = 21  # the span awaiting this one in the same task, or None
CHILD = 22  # the span this one awaits right now, or None: events go to the innermost span
SAMPLED = 23  # bool, decided once per trace root
TASK_INFO = 24  # TaskInfo on a task's first span, else None
BLOCKED_AT = 25  # perf ns of the last suspension of the innermost span
FIELDS = 26  # the list's length (the compiled callbacks check this layout, accelerator.py)


def new_span(
    span_id: int,
    parent_id: int,
    trace: int,
    task_id: int,
    code_id: int,
    thread: int,
    start: int,
    flags: int,
    sampled: bool,
    parent: Span | None,
    task_info: TaskInfo | None,
) -> Span:
    """A running span; sampled spans start with their first `poll` event."""
    events = [wire.EVENT_POLL, start, None] if sampled else None
    return [
        span_id, parent_id, trace, task_id, code_id, thread, start, 0, wire.STATE_RUNNING,
        1, 0, events, 0, None, None, 0, None, None, flags, None,
        start, parent, None, sampled, task_info, 0,
    ]  # fmt: skip


def to_wire(span: Span) -> tuple[Any, ...]:
    """The wire tuple of a span (events frozen into a tuple)."""
    record = span[: wire.SPAN_FIELDS]
    events = record[EVENTS]
    record[EVENTS] = tuple(events) if events else ()
    return tuple(record)


def in_flight(spans: list[Span], now: int, named: TaskNamer | None = None) -> list[tuple[Any, ...]]:
    """Wire tuples of the sampled ones among these open spans, ended `now` and marked
    running or blocked (they are copied: the spans stay open)."""
    records = []
    for span in spans:
        if span[SAMPLED]:
            copy = list(span)
            copy[EVENTS] = list(span[EVENTS] or ())
            records.append(to_wire(end_in_flight(copy, now, named)))
    return records


def end_in_flight(span: Span, now: int, named: TaskNamer | None = None) -> Span:
    """`span` (an open one, taken out of `open` or a copy) ended `now` before its coroutine
    did: marked running or blocked, and in flight. `named` names the tasks known by their
    `Task-N` alone (the compiled tracker's)."""
    span[END] = now
    resumed = span[RESUMED]
    if resumed:
        span[BUSY] += now - resumed
        span[RESUMED] = 0
    span[STATE] = wire.STATE_RUNNING if resumed else wire.STATE_BLOCKED
    span[FLAGS] |= wire.FLAG_IN_FLIGHT
    info = span[TASK_INFO]
    if isinstance(info, weakref.ref) and named is not None:
        span[TASK_NAME] = named(info, span[TASK])
    elif info is not None:
        span[TASK_NAME] = info.name()
        span[PARENT_TASK] = info.creator_task
    return span


class TaskInfo:
    """An asyncio task: its id, who created it, and a weak reference to read its name."""

    __slots__ = ("creator", "creator_task", "id", "ref", "thread")

    def __init__(self, task_id: int, creator: Span | None) -> None:
        self.id = task_id
        self.creator = creator
        self.creator_task: int = creator[TASK] if creator is not None else 0
        self.thread = 0
        self.ref: weakref.ref[Any] | None = None  # set once the task object exists

    def name(self) -> str | None:
        """The asyncio task name now (it may be set after creation), or None if gone."""
        task = self.ref() if self.ref is not None else None
        if task is None:
            return None
        try:
            name = task.get_name()
        except Exception:  # a third-party task class without get_name
            return None
        return name if isinstance(name, str) else None
