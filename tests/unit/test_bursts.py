"""Bursts in-process, with real sys.monitoring: the switching on a made-up clock, the spans a
burst's end cuts, and code not traced asked about once, not at every burst. Both trackers.
(End to end through the CLI: tests/integration/test_bursts.py.)"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from collector.service import agent_settings_from
from collector.settings import resolve
from profiler import wire
from profiler.agent.bursts import Bursts
from profiler.agent.monitoring import Installation, claim_tool_id
from profiler.agent.sender import PAUSED_TICK, TICK, Sender
from profiler.agent.settings import AgentSettings
from profiler.agent.tracker import Tracker
from profiler.errors import ConfigError
from tests.unit.tracking import installed

pytestmark = pytest.mark.usefixtures("tool_ids_are_freed")
_mon = sys.monitoring
BURSTS = AgentSettings(burst=0.2, burst_every=1.0)


@pytest.fixture
def tracked(
    new_tracker: Callable[[AgentSettings, int], Tracker],
) -> Iterator[tuple[Tracker, Installation]]:
    tracker = new_tracker(BURSTS, claim_tool_id("async-inspect-test"))
    installation = installed(tracker)
    try:
        yield tracker, installation
    finally:
        installation.remove()
    assert tracker.internal_errors == 0, tracker.last_error


async def waits(gate: asyncio.Event) -> str:
    await gate.wait()
    return "done"


def plain(n: int) -> int:
    return n + 1


def test_bursts_switch_every_event_off_and_on_on_schedule(
    tracked: tuple[Tracker, Installation],
) -> None:
    tracker, installation = tracked
    asyncio.run(waits_set())  # a traced code now has local events
    (traced,) = [c for c in tracker.local_codes() if c.co_name == "waits"]
    on = _mon.get_events(tracker.tool), _mon.get_local_events(tracker.tool, traced)
    assert on[0] and on[1]
    bursts = Bursts(BURSTS, installation, now=100.0)
    # WHEN the clock passes the burst's end THEN every event is off, global and local
    bursts.tick(100.19)
    assert bursts.recording and bursts.until_next(100.19) == pytest.approx(0.01)
    bursts.tick(100.2)
    assert not bursts.recording and tracker.paused
    assert _mon.get_events(tracker.tool) == 0 and _mon.get_local_events(tracker.tool, traced) == 0
    # ...until a period after the burst started, when they are on again as before
    bursts.tick(100.99)
    assert not bursts.recording
    bursts.tick(101.0)
    assert bursts.recording and not tracker.paused and bursts.count == 2
    assert (_mon.get_events(tracker.tool), _mon.get_local_events(tracker.tool, traced)) == on
    assert bursts.until_next(101.0) == pytest.approx(0.2)
    # A late tick (the GIL was busy) keeps the pause as long as it should be
    bursts.tick(101.5)
    assert bursts.until_next(101.5) == pytest.approx(0.8)


def test_between_bursts_the_sender_wakes_less_often(
    tracked: tuple[Tracker, Installation],
) -> None:
    # GIVEN a sender driving 1 s bursts every 10 s
    tracker, installation = tracked
    settings = AgentSettings(burst=1.0, burst_every=10.0)

    def sender_of(bursts: Bursts) -> Sender:
        return Sender(tracker, None, lambda _: {}, lambda _: None, bursts)  # type: ignore[arg-type]

    start = time.monotonic()
    bursts = Bursts(settings, installation, now=start)
    sender = sender_of(bursts)
    # THEN during a burst it ticks every TICK, and between bursts every PAUSED_TICK
    assert sender._until_tick() == TICK
    bursts.tick(start + 1.0)
    assert not bursts.recording
    assert sender._until_tick() == PAUSED_TICK > TICK
    bursts.tick(start + 10.0)
    assert bursts.recording
    # AND never past the next switch: a burst that began 9.9 s ago, so the next is 0.1 s away
    earlier = time.monotonic() - 9.9
    soon = Bursts(settings, installation, now=earlier)
    soon.tick(earlier + 1.0)
    assert not soon.recording
    assert 0.0 < sender_of(soon)._until_tick() <= 0.1


async def waits_set() -> None:
    gate = asyncio.Event()
    gate.set()
    await waits(gate)


def test_a_burst_end_cuts_the_open_spans_and_the_next_burst_adopts_them(
    tracked: tuple[Tracker, Installation],
) -> None:
    tracker, installation = tracked
    bursts = Bursts(BURSTS, installation, now=0.0)
    cut: list[Any] = []

    async def main() -> None:
        gate = asyncio.Event()
        task = asyncio.ensure_future(waits(gate))
        await asyncio.sleep(0)  # it waits on the gate, its span open
        assert len(tracker.open) >= 1
        tracker.finished.clear()
        bursts.tick(0.2)  # the burst ends
        assert not tracker.open
        cut.extend(tracker.finished)
        tracker.finished.clear()
        await asyncio.sleep(0)
        bursts.tick(1.0)  # the next one starts
        gate.set()
        assert await task == "done"

    asyncio.run(main())
    # THEN the span open at the end went out in flight, blocked, and the rest was dropped
    names = {entry[0]: entry[1].rsplit(".", 1)[-1] for entry in tracker.all_codes()}
    (waiting,) = [s for s in cut if names[s[wire.SPAN_CODE]] == "waits"]
    assert waiting[wire.SPAN_FLAGS] & wire.FLAG_IN_FLIGHT
    assert waiting[wire.SPAN_STATE] == wire.STATE_BLOCKED
    assert bursts.cut_spans == len(cut) == 2  # main, running then, and waits
    assert {names[s[wire.SPAN_CODE]] for s in cut} == {"main", "waits"}
    # ...and the next burst adopted the coroutine when it resumed, and saw it complete
    (adopted,) = [s for s in tracker.finished if names[s[wire.SPAN_CODE]] == "waits"]
    assert adopted[wire.SPAN_FLAGS] & wire.FLAG_START_UNKNOWN
    assert adopted[wire.SPAN_STATE] == wire.STATE_COMPLETED


def test_code_not_traced_is_asked_about_once_across_bursts(
    tracked: tuple[Tracker, Installation], monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker, installation = tracked
    asked: list[str] = []
    decide = tracker._filter.decide

    def counting(code: Any, module: str) -> Any:
        asked.append(code.co_name)
        return decide(code, module)

    monkeypatch.setattr(tracker._filter, "decide", counting)
    bursts = Bursts(BURSTS, installation, now=0.0)
    plain(1)
    for second in range(3):  # it runs between bursts too, which lifts its DISABLE
        bursts.tick(second + 0.2)
        plain(1)
        bursts.tick(second + 1.0)
        plain(1)
    assert asked.count("plain") == 1


@pytest.mark.parametrize(
    ("environ", "file"),
    [
        ({"ASYNC_INSPECT_BURST": "0.5", "OTEL_TRACES_SAMPLER": "traceidratio",
          "OTEL_TRACES_SAMPLER_ARG": "0.1"}, None),
        ({}, {"burst": 0.5, "sampler": "parentbased_traceidratio", "sampler_arg": 0.1}),
    ],
    ids=["environment", "config-file"],
)  # fmt: skip
def test_the_ratio_becomes_the_share_of_time_the_agent_records(
    environ: dict[str, str], file: dict[str, Any] | None
) -> None:
    settings = resolve({}, environ, file)
    agent = agent_settings_from(settings)
    # Inside a burst every trace is recorded; a burst starts every 0.5 / 0.1 seconds
    assert (agent.burst, agent.burst_every, agent.sample_ratio) == (0.5, pytest.approx(5.0), 1.0)
    assert Bursts.wanted(agent)
    assert not Bursts.wanted(agent_settings_from(resolve({}, {}, None)))


@pytest.mark.parametrize("sampler", ["always_on", "always_off", "traceidratio"])
def test_bursts_without_a_ratio_between_0_and_1_are_refused(sampler: str) -> None:
    environ = {"ASYNC_INSPECT_BURST": "0.5", "OTEL_TRACES_SAMPLER": sampler}
    with pytest.raises(ConfigError, match="need a sampling ratio between 0 and 1"):
        resolve({}, environ, None)  # traceidratio without an argument is a ratio of 1


def test_a_switch_that_cannot_happen_is_not_retried_in_a_loop(
    tracked: tuple[Tracker, Installation], monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker, installation = tracked
    bursts = Bursts(BURSTS, installation, now=0.0)

    def broken() -> bool:
        raise ValueError("set_local_events failed")

    # WHEN the switch off raises (the sender thread counts it and goes on)
    monkeypatch.setattr(installation, "pause", broken)
    with pytest.raises(ValueError):
        bursts.tick(0.2)
    # THEN the sender does not come straight back: the next try is a period later
    assert bursts.until_next(0.2) == pytest.approx(0.8)
    # AND once the agent is detached, a switch does nothing and waits as long
    monkeypatch.undo()
    installation.remove()
    bursts.tick(1.0)
    assert bursts.recording and bursts.until_next(1.0) == pytest.approx(0.8)
    assert _mon.get_tool(tracker.tool) is None
