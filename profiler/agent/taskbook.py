"""The tracker's asyncio tasks: what the task factory tells it (a task's creator, its
coroutine's frame until the task's first span), each task's TaskInfo until the task is
freed, and the task running now."""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

from . import spans as S
from .spans import SAMPLED, TASK

__all__ = ["TaskBook"]

_running_loop = asyncio.events._get_running_loop
_current_task = asyncio.current_task
_MAX_WALK = 64
# The event loop calls task steps and callbacks from here: nothing below is ours. (Compared
# by identity: hashing a code object is costly, see CodeBook.code_ids.)
_LOOP_RUNNER = asyncio.events.Handle._run.__code__
_FACTORY_CHECK_EVERY = 256  # as in the compiled callbacks (accel.h)


class TaskBook:
    """The tracker's tasks (a part of Tracker, which sets it up with _init_tasks)."""

    open: dict[FrameType, S.Span]  # the tracker's open spans
    tasks_seen: int
    on_new_loop: Callable[[Any], None] | None  # set by the agent
    _task_ids: Callable[[], int]
    # Tasks made by the factory whose coroutine has not opened a span yet, by its frame.
    _task_frames: dict[FrameType, S.TaskInfo]
    _task_infos: dict[int, S.TaskInfo]  # by id(task), until the task is freed
    _task_refs: dict[weakref.ref[Any], tuple[int, FrameType | None]]
    _last_loop: Any
    _factory_checks: int

    def _init_tasks(self) -> None:
        self.tasks_seen = 0
        self.on_new_loop = None
        self._task_ids = itertools.count(1, 2).__next__  # odd, as the compiled ones (tasks.c)
        self._task_frames = {}
        self._task_infos = {}
        self._task_refs = {}
        self._last_loop = None
        self._factory_checks = 0

    def task_created(self, coro: Any, task_creator_frame: FrameType | None) -> S.TaskInfo:
        """Called by the task factory before the task exists (an eager task starts inside)."""
        creator = self.find_open_span(task_creator_frame)
        creator_task = creator[TASK] if creator is not None else 0
        if creator is not None and not creator_task and not creator[SAMPLED]:
            # Unsampled, in a task the factory did not see: no TaskInfo was made for it.
            # The creator runs in the task running now; its id is what a sampled
            # descendant shows.
            creator_task = self.running_task_id()
        info = S.TaskInfo(self._task_ids(), creator)
        info.creator_task = creator_task
        self.tasks_seen += 1
        frame = getattr(coro, "cr_frame", None)
        if frame is not None:
            self._task_frames[frame] = info
        return info

    def task_bound(self, info: S.TaskInfo, task: Any, coro: Any) -> None:
        """The factory returned `task` for `info`: remember it until the task is freed."""
        try:
            info.ref = ref = weakref.ref(task, self._forget_task)
        except TypeError:  # a task class without weakref support: never forgotten early
            info.ref = None
            return
        self._task_infos[id(task)] = info
        self._task_refs[ref] = (id(task), getattr(coro, "cr_frame", None))

    def _forget_task(self, ref: weakref.ref[Any]) -> None:
        # One shared weakref callback (no closure per task): the task was freed.
        key, frame = self._task_refs.pop(ref, (0, None))
        self._task_infos.pop(key, None)
        if frame is not None:
            self._task_frames.pop(frame, None)

    def _running_task(self) -> Any | None:
        loop = _running_loop()
        if loop is None:
            return None
        if loop is not self._last_loop or not self._factory_checks:
            # A new loop, or now and then (every _FACTORY_CHECK_EVERY roots) in case the app
            # replaced our task factory: (re)wrap it. Not on every root: aiohttp makes one
            # per request.
            self._last_loop = loop
            self._factory_checks = _FACTORY_CHECK_EVERY
            if self.on_new_loop is not None:
                self.on_new_loop(loop)
        self._factory_checks -= 1
        return _current_task(loop)

    def running_task_id(self) -> int:
        """The id of the task running now (its TaskInfo made if need be), 0 if none."""
        task = self._running_task()
        return self.info_for(task).id if task is not None else 0

    def info_for(self, task: Any) -> S.TaskInfo:
        """The TaskInfo of a task the factory did not see (created before we started)."""
        info = self._task_infos.get(id(task))
        if info is None or info.ref is None or info.ref() is not task:
            info = S.TaskInfo(self._task_ids(), None)
            self.tasks_seen += 1
            self.task_bound(info, task, task.get_coro())
        return info

    def find_open_span(self, frame: FrameType | None) -> S.Span | None:
        """The innermost traced span among `frame` and its callers (for a task's creator),
        not looking past the event loop's callback runner: below it are no spans of ours."""
        for _ in range(_MAX_WALK):
            if frame is None or frame.f_code is _LOOP_RUNNER:
                return None
            span = self.open.get(frame)
            if span is not None:
                return span
            frame = frame.f_back
        return None
