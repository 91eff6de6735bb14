"""Agent span records -> OTLP protobuf bytes, with no ReadableSpan in between.

What never changes is serialized once, by the `opentelemetry.proto` classes: per session the
resource, per function the span's name, kind and constant attributes, per (event kind,
detail) the event's name and attributes. What changes per span (ids, times, a few numbers) is
written field by field (otlp_fields). A span comes out as one `ScopeSpans.spans` field;
`encode_request` puts a batch under each session's resource and our scope: a serialized
`ExportTraceServiceRequest`.

What a span says is `collector.spans`' decision (the attributes, events, status and links of
the ReadableSpans built there); a unit test holds the two paths equal.

The common record (a function no rule gives per-span attributes, no error, link, remote
parent or captured arguments) is written by the compiled `SpanWriter` (csrc/encoder.c) when
it was built, from the same pieces; everything else, and anything it does not expect, by
`encode_span`. A unit test holds the two byte for byte equal; ASYNC_INSPECT_ACCELERATOR=0
leaves everything to Python.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import (
    ResourceSpans,
    ScopeSpans,
    Span,
    SpanFlags,
    Status,
)

from profiler import wire

from . import accelerated
from .otlp_fields import (
    I32,
    I64,
    LEN,
    attribute_field,
    attribute_fields,
    attribute_pieces,
    delimited,
    key_values,
    tag,
    varint,
)
from .session import CodeInfo, ProcessSession
from .spans import (
    LINK_ATTRIBUTES,
    MALFORMED,
    SCOPE,
    UNKNOWN_CODE,
    event_attributes,
    span_attributes,
    status_description,
    to_ms,
)

__all__ = ["MALFORMED_RECORD", "SessionEncoder", "encode_request"]

# What encoding a malformed record raises: what reading it does, and struct's own error
# (a time that is negative or not an int).
MALFORMED_RECORD: Final = (*MALFORMED, struct.error)

_TRACE_ID: Final = tag(Span, "trace_id", LEN) + b"\x10"  # then 16 bytes
_SPAN_ID: Final = tag(Span, "span_id", LEN) + b"\x08"  # then 8 bytes
_PARENT_ID: Final = tag(Span, "parent_span_id", LEN) + b"\x08"
_START: Final = tag(Span, "start_time_unix_nano", I64)
_END: Final = tag(Span, "end_time_unix_nano", I64)
_TIMES: Final = struct.Struct(f"<{len(_START)}sQ{len(_END)}sQ")
_ATTRIBUTE: Final = tag(Span, "attributes", LEN)
_EVENT: Final = tag(Span, "events", LEN)
_EVENT_TIME: Final = tag(Span.Event, "time_unix_nano", I64)
_LINK: Final = tag(Span, "links", LEN)
_STATUS: Final = tag(Span, "status", LEN)
_SPANS: Final = tag(ScopeSpans, "spans", LEN)
_RESOURCE: Final = tag(ResourceSpans, "resource", LEN)
_SCOPE_SPANS: Final = tag(ResourceSpans, "scope_spans", LEN)
_RESOURCE_SPANS: Final = tag(ExportTraceServiceRequest, "resource_spans", LEN)
_U64: Final = struct.Struct("<Q")
# The span's context flags: whether its parent is remote is known (and, if so, that it is).
_HAS_IS_REMOTE: Final = int(SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK)
_IS_REMOTE: Final = int(SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK)
_FLAGS_LOCAL: Final = tag(Span, "flags", I32) + struct.pack("<I", _HAS_IS_REMOTE)
_FLAGS_REMOTE: Final = tag(Span, "flags", I32) + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE)
_STATUS_UNSET: Final = delimited(_STATUS, b"")
_SCOPE: Final = delimited(
    tag(ScopeSpans, "scope", LEN),
    InstrumentationScope(name=SCOPE.name, version=SCOPE.version or "").SerializeToString(),
)
_FAILED: Final = wire.STATE_FAILED
_STATE_NAMES: Final = wire.STATE_NAMES


@functools.lru_cache(maxsize=16384, typed=True)
def _attribute(key: str, value: object) -> bytes:
    """One span attribute. Ids and counts repeat a lot (a task's id is on each of its spans)."""
    return attribute_field(_ATTRIBUTE, key, value)


def _before_double(key: str) -> bytes:
    # A double is the last 8 bytes of its attribute field: keep what comes before them.
    return _attribute(key, 1.0)[:-8]


_DURATION_KEYS: Final = ("task.duration_ms", "task.busy_ms", "task.waiting_ms")
_DURATION_HEADS: Final = tuple(_before_double(key) for key in _DURATION_KEYS)
_DURATIONS: Final = struct.Struct("<" + "".join(f"{len(h)}sd" for h in _DURATION_HEADS))
_STATE_ATTRIBUTES: Final = {
    state: _attribute("task.state", name) for state, name in wire.STATE_NAMES.items()
}
_START_UNKNOWN: Final = _attribute("task.start_unknown", True)
# Rule constants with these keys replace a per-span attribute: such functions go the slow way.
_PER_SPAN_KEYS: Final = frozenset(
    {"thread.id", "task.id", "task.state", "task.poll_count", *_DURATION_KEYS,
     "task.parent_id", "asyncio.task.name", "task.start_unknown", "task.events_dropped",
     "error.type"}
)  # fmt: skip


def _writer_pieces() -> dict[str, bytes]:
    duration, busy, waiting = _DURATION_HEADS
    keys = {"thread_key": "thread.id", "task_key": "task.id", "polls_key": "task.poll_count",
            "parent_task_key": "task.parent_id", "task_name_key": "asyncio.task.name",
            "events_dropped_key": "task.events_dropped"}  # fmt: skip
    return {
        "trace_id": _TRACE_ID, "span_id": _SPAN_ID, "parent_id": _PARENT_ID, "start": _START,
        "end": _END, "attribute": _ATTRIBUTE, "status_unset": _STATUS_UNSET,
        "flags_local": _FLAGS_LOCAL, "spans": _SPANS, "start_unknown": _START_UNKNOWN,
        "duration": duration, "busy": busy, "waiting": waiting, **attribute_pieces(keys),
    }  # fmt: skip


@functools.lru_cache(maxsize=4096)
def _event_parts(kind: int, detail: object) -> tuple[bytes, bytes]:
    """(field up to the time, what follows the time) of an event without exception."""
    rest = Span.Event(
        name=wire.EVENT_NAMES[kind], attributes=key_values(event_attributes(kind, detail, None))
    ).SerializeToString()
    return _EVENT + varint(len(_EVENT_TIME) + 8 + len(rest)) + _EVENT_TIME, rest


class _EventLayout:
    """The events of spans with one sequence of (kind, detail): one struct packs them all,
    the times between the serialized constant parts."""

    def __init__(self, kinds: tuple[int, ...], details: tuple[object, ...]) -> None:
        pieces = [_event_parts(kind, detail) for kind, detail in zip(kinds, details, strict=True)]
        self._struct = struct.Struct("<" + "".join(f"{len(h)}sQ{len(r)}s" for h, r in pieces))
        self._args: list[object] = [part for head, rest in pieces for part in (head, 0, rest)]

    def pack(self, times: Sequence[int], offset: int) -> bytes:
        args = self._args.copy()
        args[1::3] = [t + offset for t in times]
        return self._struct.pack(*args)


@functools.lru_cache(maxsize=4096)
def _event_layout(kinds: tuple[int, ...], details: tuple[object, ...]) -> _EventLayout:
    return _EventLayout(kinds, details)


def _exception_event(kind: int, detail: object, error: tuple[str, str, str], t: int) -> bytes:
    try:  # the same failure tends to repeat: its event is serialized once
        head, rest = _exception_parts(kind, detail, error)
    except TypeError:  # an unhashable part (or a bad one: raised again below)
        head, rest = _exception_parts.__wrapped__(kind, detail, error)
    return head + _U64.pack(t) + rest


@functools.lru_cache(maxsize=1024)
def _exception_parts(kind: int, detail: object, error: tuple[str, str, str]) -> tuple[bytes, bytes]:
    """As _event_parts, for the outcome event of a failure (its exception attributes)."""
    rest = Span.Event(
        name=wire.EVENT_NAMES[kind], attributes=key_values(event_attributes(kind, detail, error))
    ).SerializeToString()
    return _EVENT + varint(len(_EVENT_TIME) + 8 + len(rest)) + _EVENT_TIME, rest


def _link(trace_id: int, span_id: int) -> bytes:
    link = Span.Link(
        trace_id=trace_id.to_bytes(16),
        span_id=span_id.to_bytes(8),
        attributes=key_values(LINK_ATTRIBUTES),
        flags=_HAS_IS_REMOTE,
    )
    return delimited(_LINK, link.SerializeToString())


@functools.lru_cache(maxsize=1024)
def _error_status(description: str | None) -> bytes:
    status = Status(code=Status.StatusCode.STATUS_CODE_ERROR, message=description or "")
    return delimited(_STATUS, status.SerializeToString())


@dataclass(frozen=True)
class _Function:
    """What every span of one traced function shares, serialized once."""

    info: CodeInfo
    head: bytes  # name and kind
    constants: bytes  # head + the attributes that never change (task.name, code.*, rules')
    simple: bool  # no rule constant replaces a per-span attribute

    @classmethod
    def build(cls, info: CodeInfo, name: str) -> _Function:
        head = Span(name=name, kind=Span.SpanKind.SPAN_KIND_INTERNAL).SerializeToString()
        constants: dict[str, object] = {
            "task.name": info.name,
            "task.location": info.location,
            "code.function.name": f"{info.module}.{info.qualname}",
            "code.file.path": info.filename,
            "code.line.number": info.lineno,
        }
        constants.update(info.attributes)
        simple = not _PER_SPAN_KEYS & {key for key, _ in info.attributes}
        return cls(info, head, head + attribute_fields(_ATTRIBUTE, constants), simple)


class SessionEncoder:
    """Encodes the span records of one process; its resource is serialized once."""

    def __init__(self, session: ProcessSession) -> None:
        resource = Resource(attributes=key_values(session.resource.attributes))
        self.resource = delimited(_RESOURCE, resource.SerializeToString())
        self._offset = session.wall_ns(0)
        self._functions: dict[int, _Function] = {}
        # What the compiled writer reads: {code id: (CodeInfo, constants)} of simple functions.
        self._simple: dict[int, tuple[CodeInfo, bytes]] = {}
        self._writer = None
        if (compiled := accelerated.module()) is not None:
            self._writer = compiled.SpanWriter(
                _writer_pieces(), accelerated.wire_layout(), _STATE_ATTRIBUTES, session.codes,
                self._simple, _event_parts, session.id_keys(), self._offset, _FAILED,
                wire.FLAG_START_UNKNOWN,
            )  # fmt: skip

    def encode(
        self, session: ProcessSession, records: Iterable[tuple[Any, ...]]
    ) -> tuple[list[bytes], int]:
        """(one `ScopeSpans.spans` field per good record, how many records were malformed)."""
        spans: list[bytes] = []
        malformed = 0
        records = records if isinstance(records, list) else list(records)
        compiled = self._writer.encode(records) if self._writer else [None] * len(records)
        for record, written in zip(records, compiled, strict=True):
            if written is None:  # not the compiled writer's case: Python's
                try:
                    written = self.encode_span(session, record)
                except MALFORMED_RECORD:
                    malformed += 1
                    continue
            spans.append(written)
        return spans, malformed

    def encode_span(self, session: ProcessSession, record: tuple[Any, ...]) -> bytes:
        """One record as a `ScopeSpans.spans` field. Raises one of MALFORMED_RECORD."""
        # The wire layout, wire.SPAN_ID ... wire.SPAN_ATTRS:
        (span_id, parent_id, trace_key, task_id, code_id, thread_id, start, end, state, polls,
         busy_ns, flat_events, events_dropped, error, task_name, parent_task, link, remote,
         flags, captured) = record  # fmt: skip
        function = self._function(session, code_id)
        offset = self._offset
        # An app's own OpenTelemetry parent decides the trace; else the agent's trace key does.
        trace_id = int(remote[0]) if remote is not None else session.trace_id(trace_key)
        parts = [_TRACE_ID, trace_id.to_bytes(16), _SPAN_ID, session.span_id(span_id).to_bytes(8)]
        context_flags = _FLAGS_LOCAL
        if parent_id:
            parts += (_PARENT_ID, session.span_id(parent_id).to_bytes(8))
        elif remote is not None:
            parts += (_PARENT_ID, int(remote[1]).to_bytes(8))
            context_flags = _FLAGS_REMOTE
        start += offset
        end += offset
        parts.append(_TIMES.pack(_START, start, _END, end))
        if function.simple and not captured:
            # spans.span_attributes, for a function whose rule (if any) replaces none of them
            duration_ns = max(0, end - start)
            duration, busy, waiting = _DURATION_HEADS
            parts += (
                function.constants,
                _attribute("thread.id", thread_id),
                _attribute("task.id", task_id),
                _STATE_ATTRIBUTES[state],
                _attribute("task.poll_count", polls),
                _DURATIONS.pack(duration, to_ms(duration_ns), busy, to_ms(busy_ns),
                                waiting, to_ms(max(0, duration_ns - busy_ns))),
            )  # fmt: skip
            if parent_task:
                parts.append(_attribute("task.parent_id", parent_task))
            if task_name is not None:
                parts.append(_attribute("asyncio.task.name", wire.task_name(task_name)))
            if flags & wire.FLAG_START_UNKNOWN:
                parts.append(_START_UNKNOWN)
            if events_dropped:
                parts.append(_attribute("task.events_dropped", events_dropped))
            if state == _FAILED and error is not None:
                parts.append(_attribute("error.type", str(error[0])))
        else:
            attributes = span_attributes(record, function.info, _STATE_NAMES[state], start, end)
            parts += (function.head, attribute_fields(_ATTRIBUTE, attributes))
        if error is None:  # (a time that is not an int is a struct.error)
            layout = _event_layout(flat_events[::3], flat_events[2::3])
            parts.append(layout.pack(flat_events[1::3], offset))
        else:
            for index in range(0, len(flat_events), 3):
                kind, t, detail = flat_events[index : index + 3]
                if type(t) is not int:
                    raise ValueError(f"malformed event {kind!r} at {t!r}")
                if kind == wire.EVENT_FAILED or kind == wire.EVENT_CANCELLED:
                    parts.append(_exception_event(kind, detail, error, t + offset))
                else:
                    head, rest = _event_parts(kind, detail)
                    parts += (head, _U64.pack(t + offset), rest)
        if link is not None:
            link_trace, link_span = link
            parts.append(_link(session.trace_id(link_trace), session.span_id(link_span)))
        if state == _FAILED:
            parts.append(_error_status(status_description(_STATE_NAMES[state], error)))
        else:
            parts.append(_STATUS_UNSET)
        parts.append(context_flags)
        body = b"".join(parts)
        return _SPANS + varint(len(body)) + body

    def _function(self, session: ProcessSession, code_id: int) -> _Function:
        info = session.codes.get(code_id)
        function = self._functions.get(code_id)
        if function is None or function.info is not info:
            # Named once per function, as session.span_name would name each of its spans.
            function = _Function.build(info or UNKNOWN_CODE, session.span_name(code_id))
            if info is not None:
                self._functions[code_id] = function
                if function.simple:
                    self._simple[code_id] = (info, function.constants)
                else:
                    self._simple.pop(code_id, None)
        return function


def encode_request(batch: Iterable[tuple[SessionEncoder, Sequence[bytes]]]) -> bytes:
    """A serialized ExportTraceServiceRequest: one ResourceSpans per session (its resource,
    our scope, its spans), whatever order the batch's pieces come in."""
    by_session: dict[SessionEncoder, list[bytes]] = {}
    for encoder, spans in batch:
        by_session.setdefault(encoder, []).extend(spans)
    # Lengths first, then one join: a request is ~100 KB, and each nested concatenation
    # would copy it all again.
    pieces: list[bytes] = []
    for encoder, spans in by_session.items():
        scope_spans = len(_SCOPE) + sum(map(len, spans))
        scope_head = _SCOPE_SPANS + varint(scope_spans)
        resource_spans = len(encoder.resource) + len(scope_head) + scope_spans
        pieces += (_RESOURCE_SPANS, varint(resource_spans), encoder.resource, scope_head, _SCOPE)
        pieces += spans
    return b"".join(pieces)
