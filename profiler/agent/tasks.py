"""Event loops and their tasks: our task factory in front of each loop's own, and the tasks
that already existed when the agent started.

The factory is what tells the tracker which span created a task (so a task spawned by a
coroutine becomes that coroutine's child span). It chains to whatever factory the app
installed, with the same arguments, so an eager factory stays eager.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import asyncio.runners
import sys
import weakref
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from .tracker import Tracker

__all__ = ["LoopWatcher", "adopt_existing", "find_running_loops"]

TaskFactory = Callable[..., Any]
_MARK = "_async_inspect_factory"
_LOOP_CODES = {
    asyncio.base_events.BaseEventLoop.run_forever.__code__,
    asyncio.runners.Runner.run.__code__,
}


def make_factory(tracker: Tracker, inner: TaskFactory | None) -> TaskFactory:
    """A task factory that reports each new task to `tracker`, then defers to `inner`."""
    task_class = asyncio.Task

    def async_inspect_task_factory(loop: Any, coro: Any, **kwargs: Any) -> Any:
        info = None
        try:
            if not tracker.paused:  # between bursts nothing is recorded (bursts.py)
                info = tracker.task_created(coro, sys._getframe(1))
        except Exception as exc:  # never let our bookkeeping break task creation
            tracker.fault(exc)
        task = (
            inner(loop, coro, **kwargs)
            if inner is not None
            else (task_class(coro, loop=loop, **kwargs))
        )
        if info is not None:
            try:
                tracker.task_bound(info, task, coro)
            except Exception as exc:
                tracker.fault(exc)
        return task

    setattr(async_inspect_task_factory, _MARK, True)
    async_inspect_task_factory.__wrapped__ = inner  # type: ignore[attr-defined]
    return async_inspect_task_factory


class LoopWatcher:
    """Installs our factory on each loop once, and restores the app's factory on stop."""

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker
        self._loops: dict[int, tuple[weakref.ref[Any], TaskFactory, TaskFactory | None]] = {}

    def ensure(self, loop: Any) -> None:
        """Put our factory in front of `loop`'s (again, if the app replaced ours)."""
        entry = self._loops.get(id(loop))
        current = loop.get_task_factory()
        if entry is not None and entry[0]() is loop and current is entry[1]:
            return
        if getattr(current, _MARK, False):  # left by an agent we took over from
            current = current.__wrapped__
        factory = make_factory(self._tracker, current)
        loop.set_task_factory(factory)
        self._loops[id(loop)] = (weakref.ref(loop), factory, current)

    def restore_all(self) -> None:
        """Give every loop back the factory it had (unless the app changed it since)."""
        for ref, factory, inner in self._loops.values():
            loop = ref()
            if loop is not None and loop.get_task_factory() is factory:
                loop.set_task_factory(inner)
        self._loops.clear()


def adopt_existing(tracker: Tracker, watcher: LoopWatcher) -> tuple[int, int]:
    """Watch every running loop and track its pending tasks; returns (loops, spans)."""
    loops = find_running_loops()
    spans = 0
    for loop in loops:
        watcher.ensure(loop)
        for task in pending_tasks(loop):
            spans += tracker.adopt_chain(task, list(await_chain(task)))
    return len(loops), spans


def find_running_loops() -> list[Any]:
    """Event loops running in any thread now, found on the threads' Python stacks."""
    loops: dict[int, Any] = {}
    for frame in list(sys._current_frames().values()):
        for current in _stack(frame):
            if current.f_code not in _LOOP_CODES:
                continue
            owner = current.f_locals.get("self")
            loop = (
                owner
                if isinstance(owner, asyncio.AbstractEventLoop)
                else (getattr(owner, "_loop", None))
            )
            if isinstance(loop, asyncio.AbstractEventLoop) and loop.is_running():
                loops[id(loop)] = loop
    return list(loops.values())


def pending_tasks(loop: Any) -> list[Any]:
    """The loop's unfinished tasks; retried because another thread may be adding some."""
    for _ in range(5):
        try:
            return list(asyncio.all_tasks(loop))
        except RuntimeError:  # "set changed size during iteration"
            continue
    return []


def await_chain(task: Any) -> Iterator[Any]:
    """The coroutine objects a suspended task is inside, outermost first."""
    coro = task.get_coro()
    for _ in range(256):
        if coro is None:
            return
        yield coro
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)


def _stack(frame: FrameType | None) -> Iterator[FrameType]:
    while frame is not None:
        yield frame
        frame = frame.f_back
