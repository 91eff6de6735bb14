"""Event loops and their tasks: our task factory in front of each loop's own, and the tasks
that already existed when the agent started.

The factory is what tells the tracker which span created a task (so a task spawned by a
coroutine becomes that coroutine's child span). It chains to whatever factory the app
installed, with the same arguments, so an eager factory stays eager.

CPython 3.13.0 to 3.13.2 rename every task created without a name to "None" once a loop has
a task factory: create_task calls the factory without the name, then `task.set_name(name)`
whatever it is (python/cpython#130033). Where create_task names the factory's task at all
(3.13's; checked in its code, as the releases after 3.13.2 changed it back and forth), a
loop whose app set no factory gets no factory from us either: the loop's own `create_task`
is wrapped instead (an attribute of the loop object, removed at detach), so its tasks keep
their names.
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


# True where create_task names a factory's task after the factory returns (see above).
_NAMES_AFTER_FACTORY = "set_name" in asyncio.base_events.BaseEventLoop.create_task.__code__.co_names


def make_create_task(tracker: Tracker, loop: Any) -> Callable[..., Any]:
    """`loop.create_task`: make_factory's factory, in front of the loop class's own
    create_task; it holds the loop weakly (it is kept in the loop's own __dict__)."""
    factory = make_factory(tracker, type(loop).create_task)
    loop_ref = weakref.ref(loop)

    def async_inspect_create_task(coro: Any, **kwargs: Any) -> Any:
        return factory(loop_ref(), coro, **kwargs)

    setattr(async_inspect_create_task, _MARK, True)
    return async_inspect_create_task


class LoopWatcher:
    """Installs our factory on each loop once (or wraps its create_task, see above), and
    restores the app's factory on stop."""

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker
        # id(loop) -> (the loop, weakly; our factory or create_task; the app's factory or
        # None; True if ours is the loop's create_task)
        self._loops: dict[int, tuple[weakref.ref[Any], TaskFactory, TaskFactory | None, bool]] = {}

    def ensure(self, loop: Any) -> None:
        """Put our factory in front of `loop`'s (again, if the app replaced ours)."""
        entry = self._loops.get(id(loop))
        current = loop.get_task_factory()
        if entry is not None and entry[0]() is loop:
            ours = vars(loop).get("create_task") if entry[3] else current
            if ours is entry[1]:
                return
        if getattr(current, _MARK, False):  # left by an agent we took over from
            current = current.__wrapped__
        # Not over a create_task the app itself put on the loop: a factory then.
        attributes = getattr(loop, "__dict__", None)
        own = attributes.get("create_task") if attributes is not None else None
        if (
            _NAMES_AFTER_FACTORY
            and current is None
            and attributes is not None
            and (own is None or hasattr(own, _MARK))
        ):
            if loop.get_task_factory() is not None:
                loop.set_task_factory(None)  # an agent's we took over from, in front of none
            create_task = make_create_task(self._tracker, loop)
            loop.create_task = create_task
            self._loops[id(loop)] = (weakref.ref(loop), create_task, None, True)
            return
        factory = make_factory(self._tracker, current)
        loop.set_task_factory(factory)
        self._loops[id(loop)] = (weakref.ref(loop), factory, current, False)

    def restore_all(self) -> None:
        """Give every loop back the factory it had (unless the app changed it since). A
        factory or create_task of ours the app still holds (it kept `loop.create_task`, say)
        goes on making tasks, without telling the tracker any more."""
        self._tracker.paused = True
        for ref, ours, inner, is_create_task in self._loops.values():
            loop = ref()
            if loop is None:
                continue
            if is_create_task and vars(loop).get("create_task") is ours:
                del loop.create_task
            elif not is_create_task and loop.get_task_factory() is ours:
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
