"""The task tracker: sys.monitoring events in, finished spans out.

Spans are keyed by the coroutine's frame object, which is stable for the coroutine's
life. The frame, not a per-thread stack, tells which span an event belongs to: when an
exception is thrown into a chain of awaits, CPython resumes only the innermost frame, so
events are not strictly nested per thread and only the frame identifies them reliably.

Event -> span life:
    PY_START            open a span; its parent is the nearest traced frame up the await
                        chain, else the span that created the task (cross-task child)
    PY_RESUME/PY_THROW  one more poll; the innermost span records `poll` (and `wake`)
    PY_YIELD            suspended; the innermost span records `blocked` on what it awaits
    PY_RETURN           completed
    PY_UNWIND           failed, or cancelled for CancelledError / GeneratorExit

PY_UNWIND and PY_THROW cannot be enabled per code object, so they arrive for every frame;
their callbacks return at once for code we do not trace and never return DISABLE, which
for these events would switch them off process-wide.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from random import random
from types import CodeType, FrameType
from typing import Any

from .. import wire
from . import spans as S
from .adoption import Adoption
from .app_trace import app_otel_parent
from .codebook import CodeBook
from .codefilter import CodeFilter
from .describe import CANCELLED, describe_awaited, describe_error
from .meters import SLOW_STEP_NS, Meters
from .settings import AgentSettings
from .spans import (
    ATTRS,
    BLOCKED_AT,
    BUSY,
    CHILD,
    END,
    EVENTS,
    EVENTS_DROPPED,
    FLAGS,
    ID,
    LINK,
    PARENT,
    POLLS,
    REMOTE,
    RESUMED,
    SAMPLED,
    START,
    STATE,
    TASK,
    TASK_INFO,
    THREAD,
    TRACE,
)  # fmt: skip
from .taskbook import _MAX_WALK, TaskBook

__all__ = ["Tracker", "callbacks_of"]

_getframe = sys._getframe
_now = time.perf_counter_ns
_native_thread = threading.get_native_id
_thread_ident = threading.get_ident
_DISABLE = sys.monitoring.DISABLE
# Frames an await chain passes through: coroutines, generators (yield from), async gens.
_CHAIN_FLAGS = 0x0020 | 0x0080 | 0x0100 | 0x0200
_POLL = wire.EVENT_POLL
_WAKE = wire.EVENT_WAKE
_BLOCKED = wire.EVENT_BLOCKED
_RUNNING = wire.STATE_RUNNING
_COMPLETED = wire.STATE_COMPLETED
_SLOW = SLOW_STEP_NS[0]


_CALLBACKS = {
    "PY_START": "on_start", "PY_RESUME": "on_resume", "PY_THROW": "on_throw",
    "PY_YIELD": "on_yield", "PY_RETURN": "on_return", "PY_UNWIND": "on_unwind",
}  # fmt: skip


def callbacks_of(handler: object) -> dict[int, Callable[..., object]]:
    """{sys.monitoring event: `handler`'s on_start, on_resume, ...}: a Tracker's Python
    callbacks, or the compiled ones of an `_accel.Hooks`."""
    events = sys.monitoring.events
    return {getattr(events, event): getattr(handler, name) for event, name in _CALLBACKS.items()}


class Tracker(CodeBook, TaskBook, Adoption):
    """Holds every live span and turns monitoring events into finished spans (the code
    objects it traces: CodeBook; the asyncio tasks it knows: TaskBook; coroutines that
    started before we watched them: Adoption)."""

    def __init__(self, settings: AgentSettings, code_filter: CodeFilter, tool: int) -> None:
        self.settings = settings
        self.tool = tool
        self._init_codes(code_filter)
        self._init_tasks()
        self.open: dict[FrameType, S.Span] = {}
        self._new_span: Callable[..., S.Span] = S.new_span  # compiled: a _accel.Span
        self._named_task: S.TaskNamer | None = None  # compiled only (spans.end_in_flight)
        self.finished: deque[S.Span] = deque()
        self.dropped: dict[str, int] = {}  # by reason; read through drop_counts()
        self.internal_errors = 0
        self.last_error = ""
        self._wake_times: dict[int, int] = {}
        self._span_ids = itertools.count(1).__next__
        self._max_open = settings.max_open_spans
        self._max_buffer = settings.buffer_size
        self._max_event_items = 3 * settings.max_events
        self._split_ns = int(settings.split_after * 1e9)
        self._ratio = settings.sample_ratio
        # The clock of span times (the compiled callbacks' own when accelerated).
        self.now: Callable[[], int] = _now
        self.started_at = self.watching_since = _now()
        self.paused = False  # between two bursts (bursts.py): every event is off
        self.meters = Meters()

    # -- sys.monitoring callbacks (hot path) --------------------------------------------

    def callbacks(self) -> dict[int, Callable[..., object]]:
        """The sys.monitoring callback of each event this tracker handles."""
        return callbacks_of(self)

    def on_start(self, code: CodeType, offset: int) -> Any:
        try:
            frame = _getframe(1)
            code_id = self.code_ids.get(id(code))
            if code_id is None:
                code_id = self.consider(code, frame.f_globals.get("__name__", "?"))
                if code_id is None:
                    return _DISABLE
            t = _now()
            open_spans = self.open
            back = frame.f_back
            parent = open_spans.get(back) if back is not None else None
            if (
                parent is None
                or t - parent[START] > self._split_ns
                or len(open_spans) >= self._max_open
                or frame in self._task_frames
            ):
                self._open(frame, code_id, 0, t)
                return None
            # The common case, inlined: awaited directly by a traced coroutine of this task.
            sampled = parent[SAMPLED]
            remote = parent[REMOTE]
            span = [
                self._span_ids(), parent[ID], parent[TRACE], parent[TASK], code_id,
                parent[THREAD], t, 0, _RUNNING, 1, 0, [_POLL, t, None] if sampled else None,
                0, None, None, 0, None, (remote[0], 0) if remote is not None else None, 0, None,
                t, parent, None, sampled, None, 0,
            ]  # fmt: skip
            parent[CHILD] = span
            open_spans[frame] = span
            if sampled and code_id in self._captures:
                span[ATTRS] = self._capture(code_id, frame)
        except Exception as exc:
            self.fault(exc)
        return None

    def on_resume(self, code: CodeType, offset: int) -> None:
        try:
            frame = _getframe(1)
            span = self.open.get(frame)
            if span is None:
                self._adopt(code, frame)
                return
            t = _now()
            span[RESUMED] = t
            span[POLLS] += 1
            if span[SAMPLED] and span[CHILD] is None:
                self._record_poll(span, t, None)
        except Exception as exc:
            self.fault(exc)

    def on_throw(self, code: CodeType, offset: int, exc: BaseException) -> None:
        if id(code) not in self.code_ids:
            return
        try:
            span = self.open.get(_getframe(1))
            if span is None:
                return
            t = _now()
            span[S.RESUMED] = t
            span[S.POLLS] += 1
            if span[S.SAMPLED] and span[S.CHILD] is None:
                self._record_poll(span, t, "throw " + type(exc).__name__)
        except Exception as error:
            self.fault(error)

    def on_yield(self, code: CodeType, offset: int, value: object) -> None:
        try:
            span = self.open.get(_getframe(1))
            if span is None:
                return
            t = _now()
            resumed = span[RESUMED]
            if resumed:
                step = t - resumed
                span[BUSY] += step
                span[RESUMED] = 0
                if span[PARENT] is None and (step > self.meters.longest_step_ns or step > _SLOW):
                    self.meters.step(step)  # the loop was blocked this long
            if span[SAMPLED] and span[CHILD] is None:
                span[BLOCKED_AT] = t
                events = span[EVENTS]
                if len(events) < self._max_event_items:
                    events += (_BLOCKED, t, describe_awaited(value))
                else:
                    span[EVENTS_DROPPED] += 1
        except Exception as exc:
            self.fault(exc)

    def on_return(self, code: CodeType, offset: int, value: object) -> None:
        try:
            if id(code) in self._wake_codes:  # before _getframe: no frame made per select()
                self._wake_times[_thread_ident()] = _now()
                return
            span = self.open.pop(_getframe(1), None)
            if span is not None:
                self._finish(span, _COMPLETED, _now(), None)
        except Exception as exc:
            self.fault(exc)

    def on_unwind(self, code: CodeType, offset: int, exc: BaseException) -> None:
        if id(code) not in self.code_ids:
            return
        try:
            span = self.open.pop(_getframe(1), None)
            if span is None:
                return
            state = wire.STATE_CANCELLED if isinstance(exc, CANCELLED) else wire.STATE_FAILED
            self._finish(span, state, _now(), exc)
        except Exception as error:
            self.fault(error)

    # -- span life ----------------------------------------------------------------------

    def _open(
        self,
        frame: FrameType,
        code_id: int,
        flags: int,
        t: int,
        where: tuple[S.Span | None, S.TaskInfo | None, bool] | None = None,
    ) -> S.Span | None:
        if len(self.open) >= self._max_open:
            self._drop("open_span_limit")
            return None
        parent, info, same_task, unseen = (
            (*where, None) if where is not None else self._find_parent(frame)
        )
        span_id = self._span_ids()
        remote = None
        if parent is not None and t - parent[START] <= self._split_ns:
            trace, parent_id, sampled = parent[TRACE], parent[ID], parent[SAMPLED]
            link = None
            if parent[REMOTE] is not None:
                remote = (parent[REMOTE][0], 0)
        else:
            # A root, or a child of a long-lived span (a server loop, a worker): its own
            # trace, linked to where it came from, so no trace grows without end.
            trace, parent_id = span_id, 0
            link = (parent[TRACE], parent[ID]) if parent is not None else None
            app_parent = app_otel_parent() if parent is None else None
            if app_parent is not None:  # the app's own OpenTelemetry span: join its trace
                remote = (app_parent[0], app_parent[1])
                sampled = app_parent[2] if self.settings.parent_based else self._sample(code_id)
            else:
                sampled = self._sample(code_id)
        if unseen is not None and sampled:  # recorded: the task gets its TaskInfo
            info = self.info_for(unseen)
        if same_task:
            assert parent is not None
            task_id, thread = parent[TASK], parent[THREAD]
            if not task_id and sampled:  # a sampled split from an unsampled unseen task's span
                task_id = self.running_task_id()
        else:
            task_id = info.id if info is not None else 0
            thread = _native_thread()
            if info is not None:
                flags |= wire.FLAG_TASK_ROOT
                info.thread = thread
        if unseen is not None:
            flags |= wire.FLAG_TASK_ROOT  # counted as a task's first span, TaskInfo or not
        span = self._new_span(
            span_id, parent_id, trace, task_id, code_id, thread, t, flags, sampled,
            parent if same_task else None, info if not same_task else None,
        )  # fmt: skip
        span[LINK] = link
        span[REMOTE] = remote
        if sampled and code_id in self._captures:
            span[ATTRS] = self._capture(code_id, frame)
        if same_task:
            assert parent is not None
            parent[CHILD] = span
        if flags & wire.FLAG_TASK_ROOT:  # a task's first span: found again in `open` by task_counts
            self.meters.tasks_created += 1
        self.open[frame] = span
        return span

    def _find_parent(
        self, frame: FrameType
    ) -> tuple[S.Span | None, S.TaskInfo | None, bool, Any | None]:
        """(parent span, task info, whether the parent awaits us in the same task, and for
        the first span of a task the factory did not see, that task: `_open` gives it a
        TaskInfo only once one of its spans is sampled).

        The compiled callbacks skip the walk below while no span runs (a frame on a stack is
        running, so nothing could be found); this one always walks, and the parity test
        holds the two to the same spans."""
        info = self._task_frames.pop(frame, None)
        if info is not None:  # this coroutine is the task's own: a task root
            return info.creator, info, False, None
        back = frame.f_back
        for _ in range(_MAX_WALK):
            if back is None:
                break
            span = self.open.get(back)
            if span is not None:
                return span, None, True, None
            info = self._task_frames.get(back)
            if info is not None:  # a library coroutine runs the task; we are its first app span
                return info.creator, info, False, None
            if not back.f_code.co_flags & _CHAIN_FLAGS:
                break  # left the await chain (the event loop called the task's step)
            back = back.f_back
        # A task our factory did not see. If it started eagerly, its creator is still on
        # the stack below (create_task -> factory -> first step); if the event loop called
        # its step, nothing of ours is below and the search stops right there.
        return self.find_open_span(back), None, False, self._running_task()

    def _sample(self, code_id: int) -> bool:
        ratio = self._code_rates.get(code_id, self._ratio)
        return ratio >= 1.0 or random() < ratio

    def _capture(self, code_id: int, frame: FrameType) -> tuple[tuple[str, str], ...] | None:
        # At PY_START the frame's locals are exactly its arguments.
        return self._captures[code_id].values(frame.f_locals) or None

    def _finish(self, span: S.Span, state: int, t: int, exc: BaseException | None) -> None:
        span[END] = t
        resumed = span[RESUMED]
        parent = span[PARENT]
        if resumed:
            span[BUSY] += t - resumed
            span[RESUMED] = 0
            if parent is None:  # a task's last step, ended by return or raise
                self.meters.step(t - resumed)
        span[STATE] = state
        if parent is not None and parent[CHILD] is span:
            parent[CHILD] = None
        self.meters.span_finished(span, state, t, parent is None)
        if span[FLAGS] & wire.FLAG_TASK_ROOT:  # a task's first span: the task is done
            self.meters.task_finished(state)
        if not span[SAMPLED]:
            return
        span[EVENTS] += (_STATE_EVENTS[state], t, None)  # the outcome, even past the cap
        if exc is not None:
            span[S.ERROR] = self._describe_error(exc)
        info = span[TASK_INFO]
        if info is not None:
            span[S.TASK_NAME] = info.name()
            span[S.PARENT_TASK] = info.creator_task
        if len(self.finished) < self._max_buffer:
            self.finished.append(span)
        else:
            self._drop("buffer_full")

    def _record_poll(self, span: S.Span, t: int, detail: str | None) -> None:
        events = span[EVENTS]
        room = self._max_event_items - len(events)
        woke = self._wake_times.get(_thread_ident(), 0)
        if woke > span[BLOCKED_AT]:
            if room >= 6:
                events += (_WAKE, woke, None, _POLL, t, detail)
            elif room >= 3:
                events += (_WAKE, woke, None)
                span[EVENTS_DROPPED] += 1
            else:
                span[EVENTS_DROPPED] += 2
        elif room >= 3:
            events += (_POLL, t, detail)
        else:
            span[EVENTS_DROPPED] += 1

    # -- reporting ----------------------------------------------------------------------

    def in_flight(self, now: int) -> list[tuple[Any, ...]]:
        """Wire tuples of every open sampled span, ended `now` (spans.in_flight)."""
        return S.in_flight(list(self.open.values()), now, self._named_task)

    def metrics(self) -> dict[str, Any]:
        """The meters' snapshot, with live and running tasks counted now."""
        live, running, oldest = self.task_counts()
        return self.meters.snapshot(live, running, self.now() - oldest if running else 0)

    def spans_frame(self, spans: list[S.Span]) -> bytes:
        """A SPANS frame of these finished spans (for the sender). Raises WireError if too
        big for one frame."""
        return wire.encode_frame(wire.SPANS, [S.to_wire(span) for span in spans])

    def task_counts(self) -> tuple[int, int, int]:
        """(live tasks, running tasks, the earliest time one of them resumed or 0), from the
        open spans: a task is live while its first span is open. A walk at each stats frame
        costs less than a map of task roots kept up to date for every task."""
        roots = [span for span in list(self.open.values()) if span[FLAGS] & wire.FLAG_TASK_ROOT]
        resumed = [span[RESUMED] for span in roots if span[RESUMED]]
        return len(roots), len(resumed), min(resumed, default=0)

    def cut(self, now: int) -> int:
        """A burst ended, its events off: every open span leaves `open`, and the sampled
        ones are finished as in flight (spans.end_in_flight). Returns how many were."""
        spans = list(self.open.values())
        self.open.clear()
        self._wake_times.clear()
        self._forget_running()
        cut = [S.end_in_flight(span, now, self._named_task) for span in spans if span[SAMPLED]]
        room = max(0, self._max_buffer - len(self.finished))
        self.finished.extend(cut[:room])
        for _ in cut[room:]:
            self._drop("buffer_full")
        return len(cut)

    def _forget_running(self) -> None:
        """No span of ours is running any more (the compiled callbacks count them)."""

    def clear(self) -> None:
        """Forget every span, task and count (after a final flush, or in a forked child)."""
        self.meters = Meters()
        self.open.clear()
        self.finished.clear()
        self._task_frames.clear()
        self._task_infos.clear()
        self._task_refs.clear()
        self._wake_times.clear()

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def tick_clock(self) -> None:
        """Called by the sender every tick: the compiled callbacks refit their clock."""

    def drop_counts(self) -> dict[str, int]:
        """Spans dropped so far, by reason."""
        return dict(self.dropped)

    def fault(self, exc: Exception) -> None:
        # Never raise into the application: count, remember the last one, carry on.
        self.internal_errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"

    def _describe_error(self, exc: BaseException) -> tuple[str, str, str]:
        return describe_error(exc, self.settings.stack_limit)


_STATE_EVENTS = {
    wire.STATE_COMPLETED: wire.EVENT_COMPLETED,
    wire.STATE_FAILED: wire.EVENT_FAILED,
    wire.STATE_CANCELLED: wire.EVENT_CANCELLED,
}
