"""What the tracker tests share: the two trackers, running a traced app, reading its spans.

Fixtures (`new_tracker`, `tool_ids_are_freed`) are in conftest.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from profiler import wire
from profiler.agent import accelerator
from profiler.agent import spans as S
from profiler.agent.codefilter import CodeFilter
from profiler.agent.monitoring import Installation
from profiler.agent.settings import AgentSettings
from profiler.agent.tasks import LoopWatcher
from profiler.agent.tracker import Tracker

COMPILED, COMPILED_WHY = accelerator.available()


def python_tracker(settings: AgentSettings, tool: int) -> Tracker:
    return Tracker(settings, CodeFilter(settings), tool)


def compiled_tracker(settings: AgentSettings, tool: int) -> Tracker:
    tracker, _ = accelerator.new_tracker(settings, CodeFilter(settings), tool)
    assert isinstance(tracker, accelerator.AcceleratedTracker)
    return tracker


class Traced:
    """Finished spans of one traced run, by name."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        names = {entry[0]: entry[1] for entry in tracker.all_codes()}
        self.spans = [S.to_wire(span) for span in tracker.finished]
        self.name = {s[wire.SPAN_ID]: names[s[wire.SPAN_CODE]] for s in self.spans}

    def named(self, qualname_end: str) -> list[tuple[Any, ...]]:
        return [s for s in self.spans if self.name[s[wire.SPAN_ID]].endswith(qualname_end)]

    def one(self, qualname_end: str) -> tuple[Any, ...]:
        (found,) = self.named(qualname_end)
        return found

    def parent_name(self, span: tuple[Any, ...]) -> str | None:
        return self.name.get(span[wire.SPAN_PARENT])

    def events(self, span: tuple[Any, ...]) -> list[str]:
        flat = span[wire.SPAN_EVENTS]
        return [wire.EVENT_NAMES[flat[i]] for i in range(0, len(flat), 3)]


def installed(tracker: Tracker) -> Installation:
    installation = Installation(tracker.tool, tracker)
    installation.install()
    return installation


def run_watched(tracker: Tracker, main: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    """asyncio.run(main()) with `tracker` installed, its factory on the loop, its selector
    wakeups watched; no internal error allowed."""
    watcher = LoopWatcher(tracker)
    tracker.on_new_loop = watcher.ensure
    installation = installed(tracker)
    tracker.watch_selector_wakeups()
    try:
        asyncio.run(main())
    finally:
        installation.remove()
        watcher.restore_all()
    assert tracker.internal_errors == 0, tracker.last_error
