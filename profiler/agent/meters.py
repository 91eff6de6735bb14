"""Process metrics kept in the agent: a latency histogram per traced function and outcome,
for every span (sampled or not, shipped or dropped), and asyncio task counters.

Counting here, before sampling and before the bounded buffer, is what keeps call counts
and percentiles exact at a 1% trace sample; a collector-side connector only sees what was
sampled. Cost per finished span: one bisect and a few integer additions.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from .. import wire

__all__ = ["SLOW_STEP_LABELS", "SLOW_STEP_NS", "Meters"]

SLOW_STEP_NS = (10_000_000, 100_000_000, 1_000_000_000)  # 10 ms, 100 ms, 1 s
SLOW_STEP_LABELS = ("0.01", "0.1", "1")

_BOUNDS = wire.SPAN_BOUNDS_NS
_WIDTH = 2 + wire.SPAN_BUCKETS  # count, sum ns, buckets
# Span list indices (see spans.py); repeated here as plain ints to keep this module's
# imports to wire only.
_CODE, _START, _POLLS, _BUSY, _FLAGS = 4, 6, 9, 10, 18


class Meters:
    """Cumulative counters; `snapshot` returns what changed since the last one."""

    def __init__(self) -> None:
        self._spans: dict[int, list[int]] = {}  # code id * 8 + state -> [count, sum, buckets]
        self._dirty: set[int] = set()
        self.tasks_created = 0
        self.tasks_finished = [0] * 8  # by state
        self.polls = 0
        self.busy_ns = 0
        self.longest_step_ns = 0  # written by the tracker on the hot path; reset per snapshot
        self.slow_steps = [0] * len(SLOW_STEP_NS)  # steps longer than each threshold, ever

    def span_finished(self, span: list[Any], state: int, end: int, outermost: bool) -> None:
        """Count a finished span (adopted ones, whose start is unknown, are not timed)."""
        if span[_FLAGS] & wire.FLAG_START_UNKNOWN:
            return
        duration = end - span[_START]
        key = span[_CODE] * 8 + state
        histogram = self._spans.get(key)
        if histogram is None:
            histogram = self._spans[key] = [0] * _WIDTH
        histogram[0] += 1
        histogram[1] += duration
        histogram[2 + bisect_left(_BOUNDS, duration)] += 1
        self._dirty.add(key)
        if outermost:  # inner spans' polls and busy time are already in their outermost's
            self.polls += span[_POLLS]
            self.busy_ns += span[_BUSY]

    def merge(
        self,
        histograms: list[tuple[int, int, int, tuple[int, ...]]],
        polls: int,
        busy_ns: int,
        longest_step_ns: int,
        slow_steps: tuple[int, ...],
        tasks_created: int,
        tasks_finished: tuple[int, ...],
    ) -> None:
        """Add what the compiled callbacks counted since they were last asked (see
        accelerator.py): the same sums `span_finished`, `step` and the tracker would make."""
        for key, count, total, buckets in histograms:
            histogram = self._spans.get(key)
            if histogram is None:
                histogram = self._spans[key] = [0] * _WIDTH
            histogram[0] += count
            histogram[1] += total
            for index, hits in enumerate(buckets):
                histogram[2 + index] += hits
            self._dirty.add(key)
        self.polls += polls
        self.busy_ns += busy_ns
        self.longest_step_ns = max(self.longest_step_ns, longest_step_ns)
        for index, hits in enumerate(slow_steps):
            self.slow_steps[index] += hits
        self.tasks_created += tasks_created
        for state, hits in enumerate(tasks_finished):
            self.tasks_finished[state] += hits

    def resend_all(self) -> None:
        """A new collector knows nothing: the next snapshot carries every histogram."""
        self._dirty.update(self._spans)

    def step(self, duration: int) -> None:
        """An outermost coroutine ran `duration` ns without yielding: the loop was blocked."""
        if duration > self.longest_step_ns:
            self.longest_step_ns = duration
        if duration > SLOW_STEP_NS[0]:
            for index, threshold in enumerate(SLOW_STEP_NS):
                if duration > threshold:
                    self.slow_steps[index] += 1

    def task_finished(self, state: int) -> None:
        """A task's first span ended with `state`."""
        self.tasks_finished[state] += 1

    def snapshot(self, live_tasks: int, running_tasks: int, running_for: int) -> dict[str, Any]:
        """Cumulative values (span histograms: only those changed since the last snapshot).
        `running_for`: how long the step running right now has run (a loop stuck now)."""
        dirty, self._dirty = self._dirty, set()
        spans = [(key // 8, key % 8, *self._spans[key]) for key in dirty]
        longest, self.longest_step_ns = max(self.longest_step_ns, running_for), 0
        return {
            "spans": spans,
            "tasks_live": live_tasks,
            "tasks_running": running_tasks,
            "tasks_created": self.tasks_created,
            "tasks_finished": {
                wire.STATE_NAMES[state]: count
                for state, count in enumerate(self.tasks_finished)
                if count and state in wire.STATE_NAMES
            },
            "polls": self.polls,
            "busy_ns": self.busy_ns,
            "longest_step_ns": longest,
            "slow_steps": dict(zip(SLOW_STEP_LABELS, self.slow_steps, strict=True)),
        }
