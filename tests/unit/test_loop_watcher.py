"""How the agent hears of new tasks on a loop: a task factory in front of the app's, or, where
CPython's create_task renames a factory's unnamed task to "None" (3.13.0-3.13.2), a wrapper
of the loop's own create_task. Which one, what each leaves of the app's, and what detach
restores. The tracker here is a recorder (pure logic); test_run checks real targets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from profiler.agent import tasks
from profiler.agent.tasks import LoopWatcher


class Recorder:
    """What LoopWatcher's wrappers ask of a tracker."""

    paused = False

    def __init__(self) -> None:
        self.created: list[Any] = []
        self.bound: list[Any] = []

    def task_created(self, coro: Any, frame: Any) -> str:
        self.created.append(coro)
        return f"info {len(self.created)}"

    def task_bound(self, info: str, task: Any, coro: Any) -> None:
        self.bound.append((info, task))

    def fault(self, exc: BaseException) -> None:
        raise AssertionError(f"fault: {exc!r}")


async def leaf() -> None:
    await asyncio.sleep(0)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    made = asyncio.new_event_loop()
    yield made
    made.close()


def run_tasks(loop: asyncio.AbstractEventLoop) -> list[str]:
    async def main() -> list[str]:
        made = [asyncio.create_task(leaf()), asyncio.create_task(leaf(), name="given")]
        await asyncio.gather(*made)
        return [task.get_name() for task in made]

    return loop.run_until_complete(main())


def test_where_names_would_change_the_loops_create_task_is_wrapped(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a CPython whose create_task names a factory's task after it (3.13.0-3.13.2)
    monkeypatch.setattr(tasks, "_NAMES_AFTER_FACTORY", True)
    recorder = Recorder()
    watcher = LoopWatcher(recorder)  # type: ignore[arg-type]
    # WHEN the watcher meets a loop whose app set no factory, twice
    watcher.ensure(loop)
    wrapper = vars(loop)["create_task"]
    watcher.ensure(loop)
    # THEN the loop keeps no factory, its create_task is wrapped once
    assert loop.get_task_factory() is None
    assert vars(loop)["create_task"] is wrapper
    # AND every task is reported before and after it is made, and keeps its name
    names = run_tasks(loop)
    assert names[0].startswith("Task-") and names[1] == "given"
    assert len(recorder.created) == 3 and len(recorder.bound) == 3  # main, and its two
    # AND detach takes the wrapper away; where the app kept it, it makes tasks unreported
    kept = loop.create_task
    watcher.restore_all()
    assert "create_task" not in vars(loop)
    task = kept(leaf())
    loop.run_until_complete(task)
    assert task.done() and len(recorder.created) == 3 and len(recorder.bound) == 3


def test_a_factory_left_by_an_agent_we_took_over_from_goes_for_the_wrapper(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN such a CPython, and a loop with an earlier agent's factory in front of none
    monkeypatch.setattr(tasks, "_NAMES_AFTER_FACTORY", True)
    earlier = Recorder()
    loop.set_task_factory(tasks.make_factory(earlier, None))  # type: ignore[arg-type]
    recorder = Recorder()
    watcher = LoopWatcher(recorder)  # type: ignore[arg-type]
    # WHEN the watcher meets that loop
    watcher.ensure(loop)
    # THEN the earlier factory is gone and the wrapper reports the tasks, names kept
    assert loop.get_task_factory() is None and "create_task" in vars(loop)
    names = run_tasks(loop)
    assert names[0].startswith("Task-") and names[1] == "given"
    assert len(recorder.created) == 3 and earlier.created == []
    # AND detach leaves the loop with no factory and no wrapper
    watcher.restore_all()
    assert loop.get_task_factory() is None and "create_task" not in vars(loop)


def test_a_create_task_the_app_put_on_its_loop_is_left_alone(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN such a CPython, and an app that put its own create_task on its loop
    monkeypatch.setattr(tasks, "_NAMES_AFTER_FACTORY", True)
    calls = []
    original = loop.create_task

    def apps_create_task(coro: Any, **kwargs: Any) -> Any:
        calls.append(coro)
        return original(coro, **kwargs)

    loop.create_task = apps_create_task  # type: ignore[method-assign]
    recorder = Recorder()
    watcher = LoopWatcher(recorder)  # type: ignore[arg-type]
    # WHEN the watcher meets that loop
    watcher.ensure(loop)
    # THEN the app's create_task stays, and a factory reports the tasks it makes
    assert vars(loop)["create_task"] is apps_create_task
    assert getattr(loop.get_task_factory(), tasks._MARK)
    run_tasks(loop)
    assert len(calls) == 3 and len(recorder.created) == 3
    # AND detach gives the loop back its (lack of) factory, the app's create_task untouched
    watcher.restore_all()
    assert loop.get_task_factory() is None
    assert vars(loop)["create_task"] is apps_create_task


def test_elsewhere_a_factory_goes_in_front_of_the_apps(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a CPython that names tasks before the factory (or not at all), and an app factory
    monkeypatch.setattr(tasks, "_NAMES_AFTER_FACTORY", False)
    made: list[Any] = []

    def apps_factory(loop: Any, coro: Any, **kwargs: Any) -> Any:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        made.append(task)
        return task

    loop.set_task_factory(apps_factory)
    recorder = Recorder()
    watcher = LoopWatcher(recorder)  # type: ignore[arg-type]
    # WHEN the watcher meets the loop
    watcher.ensure(loop)
    # THEN ours is in front of the app's, which still makes every task
    assert loop.get_task_factory() is not apps_factory
    assert "create_task" not in vars(loop)
    run_tasks(loop)
    assert len(made) == 3 and [task for _, task in recorder.bound] == made
    # AND detach puts the app's factory back
    watcher.restore_all()
    assert loop.get_task_factory() is apps_factory
