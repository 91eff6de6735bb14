"""Fixtures of the tracker tests (test_tracker.py, test_unseen_tasks.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import pytest

from profiler.agent.settings import AgentSettings
from profiler.agent.tracker import Tracker
from tests.unit.tracking import COMPILED, COMPILED_WHY, compiled_tracker, python_tracker


@pytest.fixture(
    params=[
        pytest.param(python_tracker, id="python"),
        pytest.param(
            compiled_tracker,
            id="compiled",
            marks=pytest.mark.skipif(not COMPILED, reason=f"no compiled callbacks: {COMPILED_WHY}"),
        ),
    ]
)
def new_tracker(request: pytest.FixtureRequest) -> Callable[[AgentSettings, int], Tracker]:
    factory: Callable[[AgentSettings, int], Tracker] = request.param
    return factory


@pytest.fixture
def tool_ids_are_freed() -> Iterator[None]:
    yield
    assert sys.monitoring.get_tool(sys.monitoring.PROFILER_ID) is None
