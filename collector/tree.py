"""The embedded default output: each finished trace drawn in the terminal as a tree.

Children finish before their parents, so spans wait here until their trace's root
arrives; then the trace is drawn and forgotten. What never gets a root (a root still
running at exit, or spans whose parent was not traced) is drawn at flush time. Memory is
bounded: past `max_pending` spans the oldest trace is drawn early, marked incomplete.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, TextIO

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

__all__ = ["TreePrinter", "format_duration", "render_trace"]

_BRANCH, _LAST, _PIPE, _SPACE = "├─ ", "└─ ", "│  ", "   "


def format_duration(ns: float) -> str:
    """Human duration: 0.42ms, 37ms, 1.25s."""
    ms = ns / 1e6
    if ms >= 1000:
        return f"{ms / 1000:.2f}s"
    if ms >= 10:
        return f"{ms:.0f}ms"
    if ms >= 1:
        return f"{ms:.1f}ms"
    return f"{ms:.2f}ms"


def _span_line(span: ReadableSpan) -> str:
    attrs: Any = span.attributes or {}
    duration = format_duration((span.end_time or 0) - (span.start_time or 0))
    state = attrs.get("task.state", "")
    parts = [f"Span: {span.name} [{duration}] {state}"]
    if attrs.get("task.start_unknown"):
        parts.append("(started before attach)")
    if "asyncio.task.name" in attrs:
        parts.append(f"task={attrs['asyncio.task.name']}")
    if span.status.status_code is StatusCode.ERROR and span.status.description:
        parts.append(f"error={span.status.description}")
    return " ".join(parts)


def _event_lines(span: ReadableSpan, max_events: int) -> list[str]:
    start = span.start_time or 0
    events = list(span.events)
    shown = events if len(events) <= max_events else events[: max_events - 1] + events[-1:]
    lines = []
    for event in shown:
        text = f"Event: {event.name} ({format_duration(event.timestamp - start)})"
        attrs: Any = event.attributes or {}
        if "awaiting" in attrs:
            text += f" awaiting {attrs['awaiting']}"
        elif "detail" in attrs:
            text += f" {attrs['detail']}"
        lines.append(text)
    hidden = len(events) - len(shown)
    if hidden > 0:
        lines.insert(len(lines) - 1, f"… {hidden} more events")
    return lines


def render_trace(spans: list[ReadableSpan], max_events: int = 8) -> list[str]:
    """Lines drawing one trace: roots (spans whose parent is not here) at the left."""
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    children: dict[int, list[ReadableSpan]] = {}
    roots = []
    for span in spans:
        parent = span.parent.span_id if span.parent is not None else None
        if parent is not None and parent in by_id:
            children.setdefault(parent, []).append(span)
        else:
            roots.append(span)
    lines: list[str] = []

    def draw(span: ReadableSpan, prefix: str, connector: str, child_prefix: str) -> None:
        lines.append(prefix + connector + _span_line(span))
        kids = sorted(children.get(span.context.span_id, []), key=lambda s: s.start_time or 0)
        items: list[Any] = kids + _event_lines(span, max_events)
        for index, item in enumerate(items):
            last = index == len(items) - 1
            if isinstance(item, str):
                lines.append(prefix + child_prefix + (_LAST if last else _BRANCH) + item)
            else:
                draw(item, prefix + child_prefix, _LAST if last else _BRANCH,
                     _SPACE if last else _PIPE)  # fmt: skip

    for root in sorted(roots, key=lambda s: s.start_time or 0):
        draw(root, "", "", "")
    return lines


class TreePrinter:
    """A span sink that draws each trace when its root span arrives."""

    def __init__(self, stream: TextIO, max_events: int = 8, max_pending: int = 20_000) -> None:
        self._stream = stream
        self._max_events = max_events
        self._max_pending = max_pending
        self._pending: OrderedDict[int, list[ReadableSpan]] = OrderedDict()
        self._count = 0
        self._drawn: OrderedDict[int, None] = OrderedDict()  # recent, to mark late spans
        self.traces_drawn = 0

    def on_span(self, span: ReadableSpan) -> None:
        """Hold the span until its trace's root arrives; draw the trace then."""
        trace_id = span.context.trace_id
        spans = self._pending.setdefault(trace_id, [])
        spans.append(span)
        self._count += 1
        if span.parent is None or span.parent.is_remote:
            self._draw(trace_id, complete=True)
        while self._count > self._max_pending and self._pending:
            self._draw(next(iter(self._pending)), complete=False)

    def flush(self, timeout_s: float = 0.0) -> bool:
        """Draw every trace still waiting (roots still running, or never traced)."""
        for trace_id in list(self._pending):
            self._draw(trace_id, complete=False)
        self._stream.flush()
        return True

    def shutdown(self) -> None:
        """Draw what is left."""
        self.flush()

    def _draw(self, trace_id: int, complete: bool) -> None:
        spans = self._pending.pop(trace_id, [])
        self._count -= len(spans)
        if not spans:
            return
        resource: Any = spans[0].resource.attributes if spans[0].resource else {}
        header = (
            f"trace {trace_id:032x} · {resource.get('service.name', '?')} "
            f"pid {resource.get('process.pid', '?')} · {len(spans)} spans"
        )
        if trace_id in self._drawn:
            header += " · late spans of a trace drawn above"
        elif not complete:
            header += " · root not finished or not traced"
        self._drawn[trace_id] = None
        if len(self._drawn) > 10_000:
            self._drawn.popitem(last=False)
        lines = [header, *render_trace(spans, self._max_events), ""]
        self._stream.write("\n".join(lines) + "\n")
        self._stream.flush()
        self.traces_drawn += 1
