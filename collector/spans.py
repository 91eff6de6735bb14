"""Agent span records -> OpenTelemetry spans, with the attributes and events of the spec."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from profiler import wire

from .session import CodeInfo, ProcessSession

__all__ = ["SCOPE", "build_span"]

SCOPE = InstrumentationScope("async-inspect", "0.1.0")
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNKNOWN_CODE = CodeInfo("<unknown>", "<unknown>", 0, "?")


def build_span(session: ProcessSession, record: tuple[Any, ...]) -> ReadableSpan:
    """The ReadableSpan for one wire span tuple. Raises ValueError on a malformed record."""
    code_id = record[wire.SPAN_CODE]
    code = session.codes.get(code_id, _UNKNOWN_CODE)
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
        links.append(Link(linked, {"async_inspect.link": "started_by"}))
    start = session.wall_ns(record[wire.SPAN_START])
    end = session.wall_ns(record[wire.SPAN_END])
    state = wire.STATE_NAMES[record[wire.SPAN_STATE]]
    error = record[wire.SPAN_ERROR]
    attributes = _attributes(record, code, state, start, end)
    attributes.update(code.attributes)
    for key, value in record[wire.SPAN_ATTRS] or ():
        attributes[str(key)] = str(value)
    return ReadableSpan(
        name=session.span_name(code_id),
        context=context,
        parent=parent,
        resource=session.resource,
        attributes=attributes,
        events=_events(session, record, error),
        links=links,
        kind=SpanKind.INTERNAL,
        status=_status(state, error),
        start_time=start,
        end_time=end,
        instrumentation_scope=SCOPE,
    )


def _attributes(
    record: tuple[Any, ...], code: CodeInfo, state: str, start: int, end: int
) -> dict[str, Any]:
    busy_ms = record[wire.SPAN_BUSY] / 1e6
    duration_ms = max(0, end - start) / 1e6
    attributes: dict[str, Any] = {
        "thread.id": record[wire.SPAN_THREAD],
        "task.id": record[wire.SPAN_TASK],
        "task.name": code.name,
        "task.state": state,
        "task.poll_count": record[wire.SPAN_POLLS],
        "task.location": code.location,
        "task.duration_ms": round(duration_ms, 3),
        "task.busy_ms": round(busy_ms, 3),
        "task.waiting_ms": round(max(0.0, duration_ms - busy_ms), 3),
        "code.function.name": f"{code.module}.{code.qualname}",
        "code.file.path": code.filename,
        "code.line.number": code.lineno,
    }
    flags = record[wire.SPAN_FLAGS]
    if record[wire.SPAN_PARENT_TASK]:
        attributes["task.parent_id"] = record[wire.SPAN_PARENT_TASK]
    if record[wire.SPAN_TASK_NAME] is not None:
        attributes["asyncio.task.name"] = str(record[wire.SPAN_TASK_NAME])
    if flags & wire.FLAG_START_UNKNOWN:
        attributes["task.start_unknown"] = True
    if record[wire.SPAN_EVENTS_DROPPED]:
        attributes["task.events_dropped"] = record[wire.SPAN_EVENTS_DROPPED]
    if state == "failed" and record[wire.SPAN_ERROR] is not None:
        attributes["error.type"] = str(record[wire.SPAN_ERROR][0])
    return attributes


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
        attributes: dict[str, Any] = {}
        if detail is not None:
            attributes["awaiting" if kind == wire.EVENT_BLOCKED else "detail"] = str(detail)
        if kind == wire.EVENT_FAILED and error is not None:
            attributes["exception.type"] = error[0]
            attributes["exception.message"] = error[1]
            attributes["exception.stacktrace"] = error[2]
        elif kind == wire.EVENT_CANCELLED and error is not None:
            attributes["exception.type"] = error[0]
        events.append(Event(name, attributes, session.wall_ns(t)))
    return events


def _status(state: str, error: tuple[str, str, str] | None) -> Status:
    if state == "failed":
        if error is None:
            description = "failed"
        else:
            description = f"{error[0]}: {error[1]}" if error[1] else error[0]
        return Status(StatusCode.ERROR, description)
    return Status(StatusCode.UNSET)
