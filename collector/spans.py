"""Agent span records -> OpenTelemetry spans, with the attributes and events of the spec.

What a span says is decided here, once: `span_attributes`, `event_attributes`,
`status_description` and `LINK_ATTRIBUTES` are shared by `build_span` (ReadableSpan objects
for the terminal, JSON lines and extra span processors) and by `otlp_encoder` (OTLP bytes
straight from the records, for export).
"""

from __future__ import annotations

from typing import Any, Final

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from profiler import wire

from .session import CodeInfo, ProcessSession

__all__ = [
    "LINK_ATTRIBUTES",
    "MALFORMED",
    "SCOPE",
    "UNKNOWN_CODE",
    "build_span",
    "event_attributes",
    "span_attributes",
    "status_description",
    "to_ms",
]

SCOPE = InstrumentationScope("async-inspect", "0.1.0")
UNKNOWN_CODE = CodeInfo("<unknown>", "<unknown>", 0, "?")
LINK_ATTRIBUTES: Final = {"async_inspect.link": "started_by"}
# What reading a malformed record raises (the wire format checks shapes, not every value).
MALFORMED: Final = (ValueError, TypeError, KeyError, IndexError, OverflowError)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def build_span(session: ProcessSession, record: tuple[Any, ...]) -> ReadableSpan:
    """The ReadableSpan for one wire span tuple. Raises one of MALFORMED on a bad record."""
    code_id = record[wire.SPAN_CODE]
    code = session.codes.get(code_id, UNKNOWN_CODE)
    remote = record[wire.SPAN_REMOTE_PARENT]
    # An app's own OpenTelemetry parent decides the trace; else the agent's trace key does.
    trace_id = int(remote[0]) if remote is not None else session.trace_id(record[wire.SPAN_TRACE])
    context = SpanContext(trace_id, session.span_id(record[wire.SPAN_ID]), False, _SAMPLED)
    parent: SpanContext | None = None
    if record[wire.SPAN_PARENT]:
        parent = SpanContext(trace_id, session.span_id(record[wire.SPAN_PARENT]), False, _SAMPLED)
    elif remote is not None:
        parent = SpanContext(trace_id, int(remote[1]), True, _SAMPLED)
    links: list[Link] = []
    if record[wire.SPAN_LINK] is not None:
        link_trace, link_span = record[wire.SPAN_LINK]
        linked = SpanContext(
            session.trace_id(link_trace), session.span_id(link_span), False, _SAMPLED
        )
        links.append(Link(linked, dict(LINK_ATTRIBUTES)))
    start = session.wall_ns(record[wire.SPAN_START])
    end = session.wall_ns(record[wire.SPAN_END])
    state = wire.STATE_NAMES[record[wire.SPAN_STATE]]
    error = record[wire.SPAN_ERROR]
    description = status_description(state, error)
    return ReadableSpan(
        name=session.span_name(code_id),
        context=context,
        parent=parent,
        resource=session.resource,
        attributes=span_attributes(record, code, state, start, end),
        events=_events(session, record, error),
        links=links,
        kind=SpanKind.INTERNAL,
        status=Status(StatusCode.UNSET)
        if description is None
        else Status(StatusCode.ERROR, description),
        start_time=start,
        end_time=end,
        instrumentation_scope=SCOPE,
    )


def span_attributes(
    record: tuple[Any, ...], code: CodeInfo, state: str, start: int, end: int
) -> dict[str, Any]:
    """Every attribute of a span, in order: ours, then a rule's constants, then the values a
    rule captured from arguments (each may replace an earlier one of the same key)."""
    duration = max(0, end - start)
    busy = record[wire.SPAN_BUSY]
    attributes: dict[str, Any] = {
        "thread.id": record[wire.SPAN_THREAD],
        "task.id": record[wire.SPAN_TASK],
        "task.name": code.name,
        "task.state": state,
        "task.poll_count": record[wire.SPAN_POLLS],
        "task.location": code.location,
        "task.duration_ms": to_ms(duration),
        "task.busy_ms": to_ms(busy),
        "task.waiting_ms": to_ms(max(0, duration - busy)),
        "code.function.name": f"{code.module}.{code.qualname}",
        "code.file.path": code.filename,
        "code.line.number": code.lineno,
    }
    flags = record[wire.SPAN_FLAGS]
    if record[wire.SPAN_PARENT_TASK]:
        attributes["task.parent_id"] = record[wire.SPAN_PARENT_TASK]
    if record[wire.SPAN_TASK_NAME] is not None:
        attributes["asyncio.task.name"] = wire.task_name(record[wire.SPAN_TASK_NAME])
    if flags & wire.FLAG_START_UNKNOWN:
        attributes["task.start_unknown"] = True
    if record[wire.SPAN_EVENTS_DROPPED]:
        attributes["task.events_dropped"] = record[wire.SPAN_EVENTS_DROPPED]
    if state == "failed" and record[wire.SPAN_ERROR] is not None:
        attributes["error.type"] = str(record[wire.SPAN_ERROR][0])
    attributes.update(code.attributes)
    for key, value in record[wire.SPAN_ATTRS] or ():
        attributes[str(key)] = str(value)
    return attributes


def to_ms(ns: int) -> float:
    """Nanoseconds as milliseconds, rounded to the microsecond (integer arithmetic: a
    quarter of what round(ns / 1e6, 3) costs, and what both span paths use)."""
    return (ns + 500) // 1000 / 1000


def event_attributes(
    kind: int, detail: object, error: tuple[str, str, str] | None
) -> dict[str, Any]:
    """The attributes of one event: what it awaits (or another detail), and on `failed` /
    `cancelled` the OpenTelemetry exception attributes."""
    attributes: dict[str, Any] = {}
    if detail is not None:
        attributes["awaiting" if kind == wire.EVENT_BLOCKED else "detail"] = str(detail)
    if kind == wire.EVENT_FAILED and error is not None:
        attributes["exception.type"] = error[0]
        attributes["exception.message"] = error[1]
        attributes["exception.stacktrace"] = error[2]
    elif kind == wire.EVENT_CANCELLED and error is not None:
        attributes["exception.type"] = error[0]
    return attributes


def status_description(state: str, error: tuple[str, str, str] | None) -> str | None:
    """None for status UNSET; for a failed span (status ERROR) what went wrong."""
    if state != "failed":
        return None
    if error is None:
        return "failed"
    return f"{error[0]}: {error[1]}" if error[1] else error[0]


def _events(
    session: ProcessSession, record: tuple[Any, ...], error: tuple[str, str, str] | None
) -> list[Event]:
    flat = record[wire.SPAN_EVENTS]
    events: list[Event] = []
    for index in range(0, len(flat), 3):
        kind, t, detail = flat[index], flat[index + 1], flat[index + 2]
        name = wire.EVENT_NAMES.get(kind)
        if name is None or type(t) is not int:
            raise ValueError(f"malformed event {kind!r} at {t!r}")
        events.append(Event(name, event_attributes(kind, detail, error), session.wall_ns(t)))
    return events
