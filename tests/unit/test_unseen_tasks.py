"""Tasks the task factory never saw (aiohttp's request tasks): their ids and names, an id only
once a span of theirs is sampled, and what is kept of them once they are gone.

Every test runs twice: with the pure-Python callbacks and with the compiled ones.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import sysconfig
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from profiler import wire
from profiler.agent.accelerator import AcceleratedTracker
from profiler.agent.monitoring import claim_tool_id
from profiler.agent.settings import AgentSettings
from profiler.agent.tracker import Tracker
from tests.unit.tracking import Traced, run_watched

pytestmark = pytest.mark.usefixtures("tool_ids_are_freed")


LIBRARY_CALLER = """
import asyncio

async def call_twice(first, second):
    return [await first(), await second()]

async def call_twice_logging(first, second):
    done = await first()
    asyncio.current_task().get_name()  # as logging does for each record (LogRecord.taskName)
    return [done, await second()]
"""


def library_call_twice(name: str = "call_twice") -> Any:
    """An `async def` the code filter takes for the standard library's, as the coroutine of
    aiohttp's request tasks is library code: it awaits two of ours, one after the other."""
    path = os.path.join(sysconfig.get_paths()["stdlib"], "async_inspect_test_library.py")
    namespace: dict[str, Any] = {}
    exec(compile(LIBRARY_CALLER, path, "exec"), namespace)
    return namespace[name]


async def quick() -> int:
    return 1


def test_a_task_the_factory_never_saw_keeps_one_id(
    new_tracker: Callable[[AgentSettings, int], Tracker],
) -> None:
    # GIVEN tasks made as aiohttp makes its request tasks (asyncio.Task itself, no task
    # factory), each running library code that awaits two of ours
    tracker = new_tracker(AgentSettings(), claim_tool_id("async-inspect-test"))
    call_twice = library_call_twice()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(3000):
            await asyncio.Task(call_twice(quick, quick), loop=loop)

    run_watched(tracker, main)
    # THEN both spans of a task carry its id, and each task has its own
    by_task: dict[int, int] = {}
    for span in Traced(tracker).named("quick"):
        by_task[span[wire.SPAN_TASK]] = by_task.get(span[wire.SPAN_TASK], 0) + 1
    assert len(by_task) == 3000 and set(by_task.values()) == {2}


async def renames_itself() -> int:
    task = asyncio.current_task()
    assert task is not None
    task.set_name("renamed")
    return 1


def test_unseen_tasks_carry_the_names_the_app_sees_under_one_id_each(
    new_tracker: Callable[[AgentSettings, int], Tracker],
) -> None:
    # GIVEN unseen tasks each running library code that awaits two of ours, one after the
    # other: one keeps its default name; one renames itself in its first span; one was asked
    # its name (get_name formats it) before it ran, one between its spans; one was named at
    # creation
    tracker = new_tracker(AgentSettings(), claim_tool_id("async-inspect-test"))
    call_twice = library_call_twice()
    call_twice_logging = library_call_twice("call_twice_logging")
    tasks: dict[str, asyncio.Task[Any]] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        tasks["plain"] = asyncio.Task(call_twice(quick, quick), loop=loop)
        tasks["renamed"] = asyncio.Task(call_twice(renames_itself, quick), loop=loop)
        tasks["asked"] = asyncio.Task(call_twice(quick, quick), loop=loop)
        tasks["asked"].get_name()
        tasks["logging"] = asyncio.Task(call_twice_logging(quick, quick), loop=loop)
        tasks["given"] = asyncio.Task(call_twice(quick, quick), loop=loop, name="given")
        for _ in range(2):  # a task awaited by a span: its `blocked` event names it
            await asyncio.Task(call_twice(quick, quick), loop=loop)
        await asyncio.gather(*tasks.values())

    run_watched(tracker, main)
    traced = Traced(tracker)
    spans = traced.named("quick") + traced.named("renames_itself")
    # THEN both spans of each task carry its id and the name it had when each span ended
    by_name: dict[str, set[int]] = {}
    for span in spans:
        name = wire.task_name(span[wire.SPAN_TASK_NAME])
        by_name.setdefault(name, set()).add(span[wire.SPAN_TASK])
    ids = {key: by_name.pop(task.get_name()) for key, task in tasks.items()}
    assert all(len(one) == 1 for one in ids.values()), ids
    assert len(by_name) == 2 and all(len(one) == 1 for one in by_name.values())
    assert len({span[wire.SPAN_TASK] for span in spans}) == 7
    assert 0 not in {span[wire.SPAN_TASK] for span in spans}
    if isinstance(tracker, AcceleratedTracker):  # known by its Task-N alone (tasks.c)
        for key in ("plain", "asked", "logging"):
            assert ids[key] == {2 * int(tasks[key].get_name().removeprefix("Task-"))}, key
    assert traced.events(traced.one("main")).count("blocked") >= 2
    waits_for = [detail for detail in traced.one("main")[wire.SPAN_EVENTS][2::3] if detail]
    assert sum(detail.startswith("task Task-") for detail in waits_for) == 2, waits_for


def renames_then_waits(gate: asyncio.Event) -> Callable[[], Coroutine[Any, Any, bool]]:
    async def waits() -> bool:
        task = asyncio.current_task()
        assert task is not None
        task.set_name("renamed")
        return await gate.wait()

    return waits


def test_unseen_tasks_reported_in_flight_carry_their_names(
    new_tracker: Callable[[AgentSettings, int], Tracker],
) -> None:
    # GIVEN unseen tasks blocked in a span of ours when the open spans are reported in flight
    # (as at detach, or at the end of a burst): one keeps its default name, one renamed
    # itself in that span
    tracker = new_tracker(AgentSettings(), claim_tool_id("async-inspect-test"))
    call_twice = library_call_twice()
    records: list[tuple[Any, ...]] = []
    tasks: list[asyncio.Task[Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        gate = asyncio.Event()
        tasks.append(asyncio.Task(call_twice(blocked_on(gate), quick), loop=loop))
        tasks.append(asyncio.Task(call_twice(renames_then_waits(gate), quick), loop=loop))
        await asyncio.sleep(0.01)
        records.extend(tracker.in_flight(tracker.now()))
        gate.set()
        await asyncio.gather(*tasks)

    run_watched(tracker, main)
    # THEN each in-flight span names its task as the app does, under the id its other span has
    codes = {entry[0]: entry[1] for entry in tracker.all_codes()}
    waiting = [r for r in records if codes[r[wire.SPAN_CODE]].endswith("waits")]
    assert all(r[wire.SPAN_FLAGS] & wire.FLAG_IN_FLIGHT for r in waiting)
    assert sorted(wire.task_name(r[wire.SPAN_TASK_NAME]) for r in waiting) == sorted(
        task.get_name() for task in tasks
    )
    later = {span[wire.SPAN_TASK] for span in Traced(tracker).named("quick")}
    assert {r[wire.SPAN_TASK] for r in waiting} == later


def test_unsampled_unseen_tasks_get_no_task_info_yet_are_counted(
    new_tracker: Callable[[AgentSettings, int], Tracker],
) -> None:
    # GIVEN aiohttp's kind of request tasks (asyncio.Task itself, no task factory), some
    # still running when the metrics are read, traced with every trace sampled, then with
    # none
    call_twice = library_call_twice()

    def run(ratio: float) -> tuple[Tracker, dict[str, Any]]:
        tracker = new_tracker(
            AgentSettings(sample_ratio=ratio), claim_tool_id("async-inspect-test")
        )
        read: dict[str, Any] = {}

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for _ in range(300):
                await asyncio.Task(call_twice(quick, quick), loop=loop)
            gate = asyncio.Event()
            waiting = [asyncio.Task(call_twice(blocked_on(gate), quick), loop=loop)
                       for _ in range(7)]  # fmt: skip
            await asyncio.sleep(0.01)
            read.update(tracker.metrics())
            gate.set()
            await asyncio.gather(*waiting)

        run_watched(tracker, main)
        return tracker, read

    every, counted_every = run(1.0)
    none, counted_none = run(0.0)
    # THEN with none sampled, no TaskInfo was made for them (the main task's neither), and
    # the tasks are counted all the same: made, live, finished
    every_ids = {span[wire.SPAN_TASK] for span in Traced(every).named("quick")}
    assert len(every_ids) == 307 and 0 not in every_ids
    assert none.tasks_seen <= 2  # asyncio.run's own clean-up tasks, through the factory
    for key in ("tasks_created", "tasks_live", "tasks_finished"):
        assert counted_none[key] == counted_every[key], key
    assert counted_none["tasks_live"] == 8  # the 7 waiting, and main's own
    assert none.metrics()["tasks_finished"] == every.metrics()["tasks_finished"]


def blocked_on(gate: asyncio.Event) -> Callable[[], Coroutine[Any, Any, bool]]:
    async def waits() -> bool:
        return await gate.wait()

    return waits


async def late_child() -> int:
    return 1


async def made_late() -> int:
    return 1


async def long_root() -> None:
    await asyncio.sleep(0.03)  # now older than split_after: what it starts is a new trace
    await late_child()
    await late_child()
    await asyncio.create_task(made_late())


def test_a_sampled_span_below_an_unseen_tasks_unsampled_span_shows_the_task(
    new_tracker: Callable[[AgentSettings, int], Tracker],
) -> None:
    # GIVEN unseen tasks whose long-lived span is not sampled, while the new traces it
    # starts (its children and a task it creates, once it is older than split_after) are
    rules = ({"match": "*:long_root", "sample_rate": 0.0},
             {"match": "*:late_child", "sample_rate": 1.0},
             {"match": "*:made_late", "sample_rate": 1.0})  # fmt: skip
    settings = AgentSettings(split_after=0.01, rules=rules)
    tracker = new_tracker(settings, claim_tool_id("async-inspect-test"))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(asyncio.Task(long_root(), loop=loop),
                             asyncio.Task(long_root(), loop=loop))  # fmt: skip

    run_watched(tracker, main)
    traced = Traced(tracker)
    # THEN the children carry their task's id, and the task made below shows it as creator
    assert not traced.named("long_root")
    by_task: dict[int, int] = {}
    for span in traced.named("late_child"):
        by_task[span[wire.SPAN_TASK]] = by_task.get(span[wire.SPAN_TASK], 0) + 1
    assert len(by_task) == 2 and 0 not in by_task and set(by_task.values()) == {2}
    made = traced.named("made_late")
    assert sorted(span[wire.SPAN_PARENT_TASK] for span in made) == sorted(by_task)


class Unseen:
    """A stand-in for a task the factory never saw: weakly referable, no coroutine."""

    __slots__ = ("__weakref__",)

    def get_coro(self) -> None:
        return None


class BigUnseen(Unseen):
    __slots__ = tuple(f"slot{n}" for n in range(40))  # another size: no address reused


def test_what_is_kept_of_unseen_tasks_goes_once_they_are_gone(
    new_tracker: Callable[[AgentSettings, int], Tracker],
) -> None:
    # GIVEN 3000 unseen tasks given a TaskInfo, then gone
    tool = claim_tool_id("async-inspect-test")
    tracker = new_tracker(AgentSettings(), tool)
    sys.monitoring.free_tool_id(tool)  # never installed: only its maps are used
    gone = [Unseen() for _ in range(3000)]
    for task in gone:
        tracker.info_for(task)
    assert len(tracker._task_infos) == 3000
    del gone, task
    gc.collect()
    # WHEN 5000 others (alive) get theirs
    alive = [BigUnseen() for _ in range(5000)]
    for task in alive:
        tracker.info_for(task)
    # THEN only the live ones are kept (each forgotten as its task was freed), and a live
    # one keeps its TaskInfo
    assert len(tracker._task_infos) == 5000
    assert tracker.info_for(alive[0]) is tracker.info_for(alive[0])
    assert tracker.tasks_seen == 8000
    tracker.clear()
    assert len(tracker._task_infos) == 0
