"""The compiled callbacks make the same spans and meters as the pure-Python ones, and read
the same clock. How the binary is shipped and loaded: test_accelerator_loading.py."""

from __future__ import annotations

import asyncio
import contextlib
import platform
import random
import re
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from profiler import wire
from profiler.agent import accelerator
from profiler.agent import spans as S
from profiler.agent.monitoring import Installation, claim_tool_id
from profiler.agent.settings import AgentSettings
from profiler.agent.tasks import LoopWatcher, adopt_existing
from profiler.agent.tracker import Tracker
from tests.unit.tracking import compiled_tracker, python_tracker

COMPILED, WHY = accelerator.available()
needs_compiled = pytest.mark.skipif(not COMPILED, reason=f"no compiled callbacks: {WHY}")
BOOTSTRAP = Path("profiler/agent/bootstrap.py").resolve()
TIMES = {wire.SPAN_START, wire.SPAN_END, wire.SPAN_BUSY}


# -- the same spans ------------------------------------------------------------------------


async def leaf(n: int) -> int:
    await asyncio.sleep(0)
    return n


async def middle(n: int) -> int:
    return await leaf(n)


async def boom() -> None:
    await asyncio.sleep(0)
    raise KeyError("missing")


async def forever() -> None:
    await asyncio.sleep(100)


async def survives_cancel() -> str:
    try:
        await asyncio.sleep(100)
    except asyncio.CancelledError:  # thrown into it (PY_THROW), and it carries on
        await asyncio.sleep(0)
    return "caught"


async def chatty() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


async def charge(kind: str) -> None:
    await asyncio.sleep(0)


async def gated(gate: asyncio.Event) -> None:
    await gate.wait()
    await leaf(0)


async def workload(gate: asyncio.Event) -> None:
    # `gated` runs once under the tracker, so its code is traced; then the copy that was
    # waiting since before the tracker started resumes and is adopted.
    passed = asyncio.Event()
    passed.set()
    await gated(passed)
    gate.set()
    await asyncio.sleep(0)
    await middle(1)
    await asyncio.create_task(middle(2), name="spawned")
    await asyncio.gather(*(middle(n) for n in range(3)))
    with contextlib.suppress(KeyError):
        await boom()
    doomed = asyncio.create_task(forever())
    await asyncio.sleep(0)
    doomed.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await doomed
    stubborn = asyncio.create_task(survives_cancel())
    await asyncio.sleep(0)
    stubborn.cancel()
    assert await stubborn == "caught"
    await chatty()
    for kind in ("card", "cash", "card"):
        await charge(kind)
    for n in range(8):  # roots of their own: sampled or not by the ratio
        asyncio.get_running_loop().call_soon(asyncio.ensure_future, middle(n))
    await asyncio.sleep(0.01)
    await library_tasks()
    await unseen_tasks()


async def library_tasks() -> None:
    # Tasks whose own coroutine is the standard library's: one that stays pending all along
    # (no walk needed for the spans below, however long it waits), and one in which that
    # coroutine awaits ours, whose span is then the task's first, the creator's child.
    idle = asyncio.create_task(asyncio.sleep(100))
    await asyncio.sleep(0)
    await asyncio.create_task(asyncio.wait_for(middle(40), timeout=100))
    await asyncio.gather(*(direct_task(middle(41 + n), eager=False) for n in range(2)))
    idle.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await idle


def direct_task(coro: Any, eager: bool) -> asyncio.Task[Any]:
    # As aiohttp makes its request tasks: asyncio.Task itself, no task factory.
    return asyncio.Task(coro, loop=asyncio.get_running_loop(), eager_start=eager)


async def unseen_tasks() -> None:
    # Tasks the factory never sees: started by the loop, or eagerly under this span (its
    # child), or eagerly from a loop callback while no span of ours runs (each a root).
    await direct_task(middle(20), eager=False)
    await direct_task(middle(21), eager=True)
    loop = asyncio.get_running_loop()
    made: list[asyncio.Task[Any]] = []
    for n in range(3):
        loop.call_soon(lambda n=n: made.append(direct_task(middle(30 + n), eager=True)))
    await asyncio.sleep(0.01)
    await asyncio.gather(*made)


SETTINGS: dict[str, Any] = {
    "max_events": 10,
    "sample_ratio": 0.5,
    "rules": (
        {"match": "*:charge", "sample_rate": 1.0, "exclude": False, "captures": {"k": "{kind}"}},
        {"match": "*:workload", "sample_rate": 1.0, "exclude": False},
        {"match": "*:gated", "sample_rate": 1.0, "exclude": False},
    ),
}


Attaching = Callable[[Installation, LoopWatcher], Coroutine[Any, Any, None]]


def run_attaching(tracker: Tracker, main: Attaching) -> None:
    """asyncio.run(main(installation, watcher)): `main` installs the tracker when it likes,
    as an attach does mid-run; removed after, no internal error allowed."""
    watcher = LoopWatcher(tracker)
    tracker.on_new_loop = watcher.ensure
    installation = Installation(tracker.tool, tracker)
    try:
        asyncio.run(main(installation, watcher))
    finally:
        installation.remove()
        watcher.restore_all()
    assert tracker.internal_errors == 0, tracker.last_error


def run_traced(make: Callable[[AgentSettings, int], Tracker], seed: int) -> Tracker:
    tracker = make(AgentSettings(**SETTINGS), claim_tool_id("async-inspect-test"))

    async def main(installation: Installation, watcher: LoopWatcher) -> None:
        # A task already waiting when the agent starts, adopted when it resumes (not by
        # adopt_existing: all_tasks() has no stable order, so neither would the ids).
        gate = asyncio.Event()
        early = asyncio.create_task(gated(gate))
        await asyncio.sleep(0)
        installation.install()
        tracker.watch_selector_wakeups()
        await workload(gate)
        await early

    random.seed(seed)
    run_attaching(tracker, main)
    return tracker


def comparable(tracker: Tracker) -> list[tuple[Any, ...]]:
    """Every finished span without its times, its task ids numbered in order of appearance
    (the compiled tracker gives a task it knows by its `Task-N` alone the id 2N)."""
    spans = []
    tasks: dict[int, int] = {0: 0}
    for span in tracker.finished:
        record = list(S.to_wire(span))
        for index in TIMES:
            record[index] = None
        for index in (wire.SPAN_TASK, wire.SPAN_PARENT_TASK):
            record[index] = tasks.setdefault(record[index], len(tasks))
        events = record[wire.SPAN_EVENTS]
        record[wire.SPAN_EVENTS] = tuple(
            (events[i], unnumbered(events[i + 2])) for i in range(0, len(events), 3)
        )
        record[wire.SPAN_TASK_NAME] = unnumbered(record[wire.SPAN_TASK_NAME])
        spans.append(tuple(record))
    return spans


def unnumbered(text: str | int | None) -> str | None:
    """`text` with asyncio's task number (counted across runs) taken out; a task name the
    compiled agent sent as its number (wire.task_name) reads as the name."""
    if text is None:
        return None
    return re.sub(r"\bTask-\d+", "Task-N", wire.task_name(text))


@needs_compiled
@pytest.mark.parametrize("seed", [1, 2])
def test_compiled_callbacks_make_the_same_spans_and_meters(seed: int) -> None:
    # GIVEN the same workload (tasks, failures, a cancellation thrown in and survived, an
    # event cap, captured attributes, sampling, an adopted task) under both trackers
    python = run_traced(python_tracker, seed)
    compiled = run_traced(compiled_tracker, seed)
    # THEN they finish the very same spans, ids and events included
    expected = comparable(python)
    assert len(expected) > 20
    assert any(s[wire.SPAN_FLAGS] & wire.FLAG_START_UNKNOWN for s in expected)
    assert any(s[wire.SPAN_ATTRS] == (("k", "cash"),) for s in expected)
    assert comparable(compiled) == expected
    # (the compiled ones skip the frame walk while no span runs: nothing runs at the end)
    assert isinstance(compiled, accelerator.AcceleratedTracker)
    assert compiled._hooks.running == 0
    assert compiled.all_codes() == python.all_codes()
    # (the tasks the factory did not see are known by their Task-N alone, ids 2N: tasks.c)
    ids = {s[wire.SPAN_TASK] for s in map(S.to_wire, compiled.finished)}
    by_name = {task_id for task_id in ids - {0} if task_id % 2 == 0}
    assert len(by_name) >= 3 and compiled.tasks_seen + len(by_name) == python.tasks_seen
    # AND count the same spans, tasks and steps
    want, got = python.metrics(), compiled.metrics()
    for snapshot in (want, got):
        counts = snapshot["spans"]
        snapshot["spans"] = sorted((code, state, count) for code, state, count, *_ in counts)
        snapshot["busy_ns"] = snapshot["longest_step_ns"] = 0  # times
        snapshot["slow_steps"] = {}
    assert got == want


@needs_compiled
@pytest.mark.parametrize(
    "make", [python_tracker, pytest.param(compiled_tracker, marks=needs_compiled)]
)
def test_a_coroutine_started_in_the_step_that_adopted_its_caller_is_its_child(
    make: Callable[[AgentSettings, int], Tracker],
) -> None:
    # GIVEN an agent that starts inside a task's step (as an attach can), adopting that task
    tracker = make(AgentSettings(), claim_tool_id("async-inspect-test"))

    async def running_at_attach(installation: Installation, watcher: LoopWatcher) -> None:
        installation.install()
        assert adopt_existing(tracker, watcher) == (1, 1)
        # WHEN the task, still in that step, awaits a traced coroutine
        await leaf(1)

    run_attaching(tracker, running_at_attach)
    # THEN that coroutine is the adopted span's child, not a root of its own
    names = {code_id: qualname.rsplit(".", 1)[-1] for code_id, qualname, *_ in tracker.all_codes()}
    records = (S.to_wire(span) for span in tracker.finished)
    by_name = {names[record[wire.SPAN_CODE]]: record for record in records}
    adopted, child = by_name["running_at_attach"], by_name["leaf"]
    assert adopted[wire.SPAN_FLAGS] & wire.FLAG_START_UNKNOWN
    assert child[wire.SPAN_PARENT] == adopted[wire.SPAN_ID]
    assert child[wire.SPAN_TRACE] == adopted[wire.SPAN_TRACE]
    if isinstance(tracker, accelerator.AcceleratedTracker):
        assert tracker._hooks.running == 0


@needs_compiled
def test_the_clock_is_perf_counter_ns() -> None:
    # Until the sender's ticks have fitted the time-stamp counter, it is clock_gettime.
    tracker = compiled_tracker(AgentSettings(), 5)
    before = time.perf_counter_ns()
    now = tracker.now()
    after = time.perf_counter_ns()
    assert before <= now <= after


@needs_compiled
def test_the_clock_read_from_the_counter_stays_with_perf_counter_ns() -> None:
    # GIVEN the sender's ticks for a second (the slope is fitted over the first 100 ms)
    tracker = compiled_tracker(AgentSettings(), 5)
    trusted = accelerator._counter_trusted()
    on = []
    worst, last, backwards = 0, 0, 0
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        tracker.tick_clock()
        on.append(accelerator._ACCEL.clock_tick())  # type: ignore[union-attr]
        # WHEN the clock is read between ticks
        tick_end = time.monotonic() + 0.05
        while time.monotonic() < tick_end:
            before = time.perf_counter_ns()
            now = tracker.now()
            after = time.perf_counter_ns()
            worst = max(worst, before - now, now - after)
            backwards += now < last
            last = now
    # THEN where the kernel's clock is the counter, the callbacks read it once fitted
    assert any(on) == (trusted and platform.machine() == "x86_64")
    assert not any(on[:1])
    # AND it never goes back, and stays within 20 us of CLOCK_MONOTONIC
    assert backwards == 0
    assert worst < 20_000, f"{worst} ns off perf_counter_ns"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
