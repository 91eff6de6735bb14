"""The task tracker's span logic, in-process with real sys.monitoring (no socket).

Every test runs twice: with the pure-Python callbacks and with the compiled ones
(`profiler.agent.accelerator`), which must make the very same spans.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import pytest

from profiler import wire
from profiler.agent import accelerator
from profiler.agent.codefilter import CodeFilter
from profiler.agent.monitoring import Installation, NoFreeToolId, claim_tool_id
from profiler.agent.settings import AgentSettings
from profiler.agent.tracker import Tracker
from tests.unit.tracking import Traced, installed, run_watched

pytestmark = pytest.mark.usefixtures("tool_ids_are_freed")


class Trace(Protocol):
    def __call__(self, main: Callable[[], Coroutine[Any, Any, Any]], **settings: Any) -> Traced: ...


@pytest.fixture
def trace(new_tracker: Callable[[AgentSettings, int], Tracker]) -> Trace:
    def run(main: Callable[[], Coroutine[Any, Any, Any]], **settings: Any) -> Traced:
        tracker = new_tracker(AgentSettings(**settings), claim_tool_id("async-inspect-test"))
        run_watched(tracker, main)
        return Traced(tracker)

    return run


async def leaf() -> int:
    await asyncio.sleep(0.001)
    return 1


async def middle() -> int:
    return await leaf()


def test_awaited_coroutines_are_child_spans_and_tasks_children_of_their_creator(
    trace: Trace,
) -> None:
    async def main() -> None:
        await middle()
        await asyncio.create_task(middle(), name="spawned")

    traced = trace(main)
    first, second = sorted(traced.named("middle"), key=lambda s: s[wire.SPAN_START])
    main_span = traced.one("main")
    assert traced.parent_name(first) == traced.parent_name(second)
    assert traced.name[main_span[wire.SPAN_ID]].endswith("<locals>.main")
    assert first[wire.SPAN_PARENT] == second[wire.SPAN_PARENT] == main_span[wire.SPAN_ID]
    assert first[wire.SPAN_TASK] == main_span[wire.SPAN_TASK]
    assert second[wire.SPAN_TASK] != main_span[wire.SPAN_TASK]
    assert second[wire.SPAN_FLAGS] & wire.FLAG_TASK_ROOT
    assert second[wire.SPAN_TASK_NAME] == "spawned"
    assert second[wire.SPAN_PARENT_TASK] == main_span[wire.SPAN_TASK]
    for leaf_span in traced.named("leaf"):
        assert traced.parent_name(leaf_span) == "middle"
        assert traced.events(leaf_span) == ["poll", "blocked", "wake", "poll", "completed"]
    assert {s[wire.SPAN_TRACE] for s in traced.spans} == {main_span[wire.SPAN_ID]}


def test_eager_task_factory_stays_eager_and_keeps_the_parent(trace: Trace) -> None:
    started_eagerly: list[bool] = []

    async def child() -> None:
        started_eagerly.append(True)
        await asyncio.sleep(0)

    async def main() -> None:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        task = asyncio.create_task(child())
        assert started_eagerly == [True]  # it ran inside create_task: still eager
        await task

    traced = trace(main)
    assert traced.parent_name(traced.one("child")).endswith("main")


def test_failed_and_cancelled_spans(trace: Trace) -> None:
    async def boom() -> None:
        await asyncio.sleep(0)
        raise KeyError("missing")

    async def forever() -> None:
        await asyncio.sleep(100)

    async def main() -> None:
        with pytest.raises(KeyError):
            await boom()
        task = asyncio.create_task(forever())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    traced = trace(main)
    failed = traced.one("boom")
    assert failed[wire.SPAN_STATE] == wire.STATE_FAILED
    kind, message, stack = failed[wire.SPAN_ERROR]
    assert (kind, message) == ("KeyError", "'missing'")
    assert "in boom" in stack and stack.endswith("KeyError: 'missing'")
    assert traced.events(failed)[-1] == "failed"
    cancelled = traced.one("forever")
    assert cancelled[wire.SPAN_STATE] == wire.STATE_CANCELLED
    assert traced.events(cancelled)[-1] == "cancelled"


def test_children_of_a_long_lived_span_start_linked_traces(trace: Trace) -> None:
    async def main() -> None:
        await leaf()
        await asyncio.sleep(0.05)
        await leaf()  # main is now older than split_after

    traced = trace(main, split_after=0.02)
    main_span = traced.one("main")
    early, late = sorted(traced.named("leaf"), key=lambda s: s[wire.SPAN_START])
    assert early[wire.SPAN_TRACE] == main_span[wire.SPAN_TRACE]
    assert late[wire.SPAN_PARENT] == 0 and late[wire.SPAN_TRACE] == late[wire.SPAN_ID]
    assert late[wire.SPAN_LINK] == (main_span[wire.SPAN_TRACE], main_span[wire.SPAN_ID])


def test_event_cap_counts_what_it_drops_but_keeps_the_outcome(trace: Trace) -> None:
    async def chatty() -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    async def main() -> None:
        await chatty()

    traced = trace(main, max_events=10)
    span = traced.one("chatty")
    names = traced.events(span)
    assert len(names) == 11 and names[-1] == "completed"
    # 1 first poll + per sleep(0): blocked, wake (the loop's select returned), poll
    assert span[wire.SPAN_EVENTS_DROPPED] + 10 == 1 + 3 * 50
    assert span[wire.SPAN_POLLS] == 51


def test_bounded_memory_counts_drops(trace: Trace) -> None:
    async def main() -> None:
        for _ in range(30):
            await leaf()

    traced = trace(main, buffer_size=10)
    assert len(traced.spans) == 10
    assert traced.tracker.drop_counts()["buffer_full"] == 21  # 30 leaves + main - 10 kept


def test_library_code_is_not_traced_unless_included(trace: Trace) -> None:
    async def main() -> None:
        await asyncio.wait_for(leaf(), 1)

    default = trace(main)
    assert not any("wait_for" in name for name in default.name.values())
    assert default.parent_name(default.one("leaf")).endswith("main")  # through wait_for
    included = trace(main, include=("asyncio.*",))
    assert any(name == "wait_for" for name in included.name.values())


def test_excluded_code_is_not_traced(trace: Trace) -> None:
    async def main() -> None:
        await middle()

    traced = trace(main, exclude=("*:middle",))
    assert traced.named("middle") == []
    assert traced.parent_name(traced.one("leaf")).endswith("main")


def test_no_free_tool_id_is_reported_and_others_are_untouched() -> None:
    taken = []
    for tool in (2, 3, 4, 5):
        if sys.monitoring.get_tool(tool) is None:
            sys.monitoring.use_tool_id(tool, f"other-{tool}")
            taken.append(tool)
    try:
        with pytest.raises(NoFreeToolId, match="2=other-2"):
            claim_tool_id("async-inspect")
        assert [sys.monitoring.get_tool(t) for t in taken] == [f"other-{t}" for t in taken]
    finally:
        for tool in taken:
            sys.monitoring.free_tool_id(tool)


def test_a_broken_callback_never_raises_into_the_app() -> None:
    async def main() -> int:
        return await middle()

    agent_settings = AgentSettings()
    tool = claim_tool_id("async-inspect-test")
    tracker = Tracker(agent_settings, CodeFilter(agent_settings), tool)
    tracker.open = None  # type: ignore[assignment]  # every callback now fails inside
    installation = Installation(tool, tracker)
    installation.install()
    try:
        assert asyncio.run(main()) == 1
    finally:
        installation.remove()
    assert tracker.internal_errors > 0 and "NoneType" in tracker.last_error


def test_a_failing_decision_never_raises_into_the_app(
    new_tracker: Callable[[AgentSettings, int], Tracker],
) -> None:
    # GIVEN a tracker whose first-sight decision fails for every code object
    tracker = new_tracker(AgentSettings(), claim_tool_id("async-inspect-test"))
    tracker._filter = None  # type: ignore[assignment]
    installation = installed(tracker)
    try:
        # WHEN coroutines start THEN the app runs as if nobody watched
        assert asyncio.run(middle()) == 1
    finally:
        installation.remove()
    # AND each failure was counted, not raised
    assert tracker.internal_errors > 0 and "NoneType" in tracker.last_error
    assert list(tracker.finished) == []


def test_a_broken_span_never_raises_into_the_app(
    new_tracker: Callable[[AgentSettings, int], Tracker],
) -> None:
    # GIVEN a coroutine whose span gets broken while it runs
    tracker = new_tracker(AgentSettings(), claim_tool_id("async-inspect-test"))

    async def main() -> int:
        value = await middle()
        tracker.open[sys._getframe()] = [None]  # yield, resume and return now fail inside
        await asyncio.sleep(0)
        return value

    installation = installed(tracker)
    try:
        # WHEN it suspends, resumes and returns THEN the app sees nothing of it
        assert asyncio.run(main()) == 1
    finally:
        installation.remove()
    # AND the failures were counted (the compiled callbacks check the span's type first),
    # its children traced before it broke
    compiled = isinstance(tracker, accelerator.AcceleratedTracker)
    failure = "TypeError: a span in `open` is not an _accel.Span" if compiled else "IndexError"
    assert tracker.internal_errors >= 3 and failure in tracker.last_error
    assert len(Traced(tracker).named("leaf")) == 1


def test_a_task_blocking_in_its_last_step_is_measured(trace: Trace) -> None:
    import time

    async def blocker() -> None:
        await asyncio.sleep(0)
        time.sleep(0.05)  # blocks the loop, then returns: no yield ends this step

    async def main() -> None:
        await asyncio.create_task(blocker())

    traced = trace(main)
    snapshot = traced.tracker.metrics()
    assert snapshot["longest_step_ns"] >= 50_000_000
    assert snapshot["slow_steps"] == {"0.01": 1, "0.1": 0, "1": 0}


def test_what_is_kept_per_task_goes_with_the_task(
    new_tracker: Callable[[AgentSettings, int], Tracker],
) -> None:
    # GIVEN a tracker whose factory sees every task
    tracker = new_tracker(AgentSettings(), claim_tool_id("async-inspect-test"))
    kept: dict[str, int] = {}

    def sizes() -> dict[str, int]:
        maps = {"infos": tracker._task_infos, "frames": tracker._task_frames, "open": tracker.open}
        return {name: len(found) for name, found in maps.items()}

    async def main() -> None:
        before = sizes()
        # WHEN tasks run to the end, and one is cancelled before its coroutine ever started
        tasks = [asyncio.create_task(middle()) for _ in range(200)]
        never = asyncio.create_task(middle())
        never.cancel()
        assert [await task for task in tasks] == [1] * 200  # (gather would keep them)
        with pytest.raises(asyncio.CancelledError):
            await never
        during = sizes()
        del tasks, never
        await asyncio.sleep(0)  # the loop's last handles of them run
        gc.collect()
        kept.update({f"{name} grew": during[name] - before[name] for name in before})
        kept.update({name: sizes()[name] - before[name] for name in before})

    run_watched(tracker, main)
    # THEN they were known while alive, and nothing of them is kept once they are gone
    assert kept["infos grew"] == 201, kept
    assert {name: kept[name] for name in ("infos", "frames", "open")} == dict.fromkeys(
        ("infos", "frames", "open"), 0
    ), kept


def test_live_and_running_tasks_are_counted_from_the_open_spans(
    new_tracker: Callable[[AgentSettings, int], Tracker],
) -> None:
    tracker = new_tracker(AgentSettings(), claim_tool_id("async-inspect-test"))
    counted: list[tuple[int, int, int]] = []

    async def main() -> None:
        # GIVEN five tasks blocked on an event, and this one running
        event = asyncio.Event()
        tasks = [asyncio.create_task(event.wait()) for _ in range(5)]
        waiting = [asyncio.create_task(_wait_for(event)) for _ in range(5)]
        await asyncio.sleep(0)
        now = time.perf_counter_ns()  # the agent's clock, in C as in Python
        # WHEN counted THEN: ours and the five of traced code are live, ours alone runs
        counted.append(tracker.task_counts())
        assert 0 < counted[0][2] <= now
        event.set()
        await asyncio.gather(*tasks, *waiting)
        counted.append(tracker.task_counts())

    run_watched(tracker, main)
    assert counted[0][:2] == (6, 1), counted  # event.wait() is asyncio's: no span of ours
    assert counted[1][:2] == (1, 1), counted
    assert tracker.metrics()["tasks_finished"]["completed"] == 6  # and ours, since


async def _wait_for(event: asyncio.Event) -> None:
    await event.wait()
