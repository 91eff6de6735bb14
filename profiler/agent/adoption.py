"""Spans for coroutines that started before we watched them: the tasks pending at attach
(adopt_chain, the whole await chain at once), and a traced coroutine seen first when it
resumes (`_adopt`: after an attach, or in a new burst). Their start is unknown: they start
when we began to watch (FLAG_START_UNKNOWN)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

from .. import wire
from . import spans as S
from .spans import EVENTS, RESUMED

__all__ = ["Adoption"]

_current_task = asyncio.current_task
_POLL = wire.EVENT_POLL


class Adoption:
    """The tracker's adoption of running coroutines (a part of Tracker, whose span opening,
    code ids and tasks it uses)."""

    open: dict[FrameType, S.Span]
    code_ids: dict[int, int]
    started_at: int  # perf ns when the tracker began
    watching_since: int  # perf ns when the events were last switched on (bursts.py)
    now: Callable[[], int]
    consider: Callable[[CodeType, str], int | None]
    info_for: Callable[[Any], S.TaskInfo]
    _open: Callable[..., S.Span | None]

    def _adopt(self, code: CodeType, frame: FrameType) -> None:
        """A traced coroutine resumed that started before we watched it: track it from now."""
        code_id = self.code_ids.get(id(code))
        if code_id is None:
            return
        span = self._open(frame, code_id, wire.FLAG_START_UNKNOWN, self.watching_since)
        if span is not None:
            now = span[RESUMED] = self.now()
            self._became_running()
            if span[EVENTS] is not None:
                span[EVENTS] = [_POLL, now, None]  # its first poll seen, not a start

    def _became_running(self) -> None:
        """Python made a span in `open` running (the compiled callbacks count them)."""

    def adopt_chain(self, task: Any, coros: list[Any]) -> int:
        """Track a task's traced coroutines (outermost first); returns spans made. They are
        suspended, unless the task is in a step now (the agent started inside it, or while
        its thread waits in a blocking call): then they are running from now."""
        info: S.TaskInfo | None = self.info_for(task)
        parent: S.Span | None = None
        made = 0
        running = _in_step(task)
        for coro in coros:
            frame = getattr(coro, "cr_frame", None)
            if frame is None or frame in self.open:
                parent = self.open.get(frame) if frame is not None else parent
                continue
            code_id = self.consider(frame.f_code, frame.f_globals.get("__name__", "?"))
            if code_id is None:
                continue
            where = (parent, None, True) if parent is not None else (None, info, False)
            span = self._open(frame, code_id, wire.FLAG_START_UNKNOWN, self.started_at, where)
            if span is None:
                break
            if running:
                span[RESUMED] = self.now()
                self._became_running()
            else:
                span[RESUMED] = 0  # suspended right now: no poll seen yet
            if span[EVENTS] is not None:
                span[EVENTS] = []
            parent, made = span, made + 1
        return made


def _in_step(task: Any) -> bool:
    """Whether `task` is its loop's current task: in a step, its frames on a stack."""
    try:
        return bool(_current_task(task.get_loop()) is task)
    except Exception:  # a task class of another kind: taken as suspended, as before
        return False
