"""The OTLP encoder: records encoded straight to protobuf bytes parse back to exactly what the
SDK path (ReadableSpan + OpenTelemetry's own encoder) produces for the same records."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.otlp_encoder import SessionEncoder, encode_request
from collector.session import ProcessSession, ResourceSettings
from collector.spans import MALFORMED, build_span
from profiler import wire
from profiler.agent.rules import Rule, RuleBook

ERROR = ("ValueError", "boom", 'Traceback:\n  File "app.py", line 3, in fail\n')


def session(pid: int = 7, rules: list[Rule] | None = None) -> ProcessSession:
    hello = {
        "pid": pid,
        "ppid": 1,
        "program": "shop",
        "python": "3.12.1",
        "implementation": "cpython",
        "argv": ["python", "shop.py", "--port", "80"],
        "hostname": "host-a",
        "env": {"OTEL_RESOURCE_ATTRIBUTES": "team=core,replicas=3"},
        "clock": (1_700_000_000_000_000_000, 5_000),
    }
    s = ProcessSession(hello, ResourceSettings(service_version="1.2"), rules=RuleBook(rules or []))
    s.add_codes([(1, "handle", "/app/shop.py", 3, "shop"), (2, "Db.query", "/app/db.py", 9, "db")])
    return s


def record(**changes: Any) -> tuple[Any, ...]:
    """A completed child span with poll / blocked / wake / poll / completed events."""
    fields: list[Any] = [
        5, 2, 1, 3, 1, 4242, 10_000, 2_510_000, wire.STATE_COMPLETED, 2, 400_000,
        (wire.EVENT_POLL, 10_000, None, wire.EVENT_BLOCKED, 20_000, "Future",
         wire.EVENT_WAKE, 2_400_000, None, wire.EVENT_POLL, 2_450_000, None,
         wire.EVENT_COMPLETED, 2_510_000, None),
        0, None, None, 0, None, None, 0, None,
    ]  # fmt: skip
    names = {"id": wire.SPAN_ID, "parent": wire.SPAN_PARENT, "code": wire.SPAN_CODE,
             "thread": wire.SPAN_THREAD, "task": wire.SPAN_TASK, "state": wire.SPAN_STATE,
             "events": wire.SPAN_EVENTS, "dropped": wire.SPAN_EVENTS_DROPPED,
             "error": wire.SPAN_ERROR, "task_name": wire.SPAN_TASK_NAME,
             "parent_task": wire.SPAN_PARENT_TASK, "link": wire.SPAN_LINK,
             "remote": wire.SPAN_REMOTE_PARENT, "flags": wire.SPAN_FLAGS,
             "attrs": wire.SPAN_ATTRS, "start": wire.SPAN_START, "end": wire.SPAN_END,
             "busy": wire.SPAN_BUSY}  # fmt: skip
    for name, value in changes.items():
        fields[names[name]] = value
    return tuple(fields)


RECORDS = {
    "child": record(),
    "task root": record(
        parent=0, task_name="Task-7", parent_task=2, flags=wire.FLAG_TASK_ROOT, thread=-1
    ),
    "failed": record(
        state=wire.STATE_FAILED,
        error=ERROR,
        events=(wire.EVENT_POLL, 10_000, None, wire.EVENT_FAILED, 2_510_000, None),
    ),
    "failed, no error": record(state=wire.STATE_FAILED),
    "cancelled": record(
        state=wire.STATE_CANCELLED,
        error=("CancelledError", "", ""),
        events=(wire.EVENT_CANCELLED, 2_510_000, "by timeout"),
    ),
    "in flight": record(
        state=wire.STATE_BLOCKED, flags=wire.FLAG_IN_FLIGHT | wire.FLAG_START_UNKNOWN, dropped=9
    ),
    "split, linked": record(parent=0, link=(1, 2)),
    "remote parent": record(parent=0, remote=(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0xF067AA)),
    "captured": record(attrs=(("kind", "book"), ("task.state", "odd"))),
    "unknown code": record(code=99, task=2**40),
    "rule constants": record(code=2),
    "no events, busy > duration": record(events=(), busy=9_999_999),
}


def sdk_request(s: ProcessSession, records: list[tuple[Any, ...]]) -> Any:
    return encode_spans([build_span(s, r) for r in records])


def our_request(s: ProcessSession, records: list[tuple[Any, ...]]) -> Any:
    encoder = SessionEncoder(s)
    spans, malformed = encoder.encode(s, records)
    assert malformed == 0
    return ExportTraceServiceRequest.FromString(encode_request([(encoder, spans)]))


def normalized(request: Any) -> Any:
    """Attributes in key order (their order carries no meaning in OTLP)."""
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                items = sorted(span.attributes, key=lambda kv: kv.key)
                del span.attributes[:]
                span.attributes.extend(items)
    return request


@pytest.mark.parametrize("name", list(RECORDS))
def test_a_record_encodes_to_what_the_sdk_path_sends(name: str) -> None:
    # GIVEN a session whose rule gives Db.query constants, one replacing a per-span key
    rule = Rule("db:Db.query", name="db_query", attributes={"op": "read", "thread.id": 0})
    s = session(rules=[rule])
    # WHEN one record goes through our encoder and through ReadableSpan + the SDK's encoder
    ours = normalized(our_request(s, [RECORDS[name]]))
    theirs = normalized(sdk_request(s, [RECORDS[name]]))
    # THEN the parsed requests are equal: ids, times, attributes, events, links, status, flags
    assert ours == theirs
    span = ours.resource_spans[0].scope_spans[0].spans[0]
    assert span.name and len(span.trace_id) == 16 and len(span.span_id) == 8


def test_a_batch_carries_each_resource_once_and_every_span() -> None:
    # GIVEN two processes, each with spans in two chunks of one batch
    first, second = session(pid=7), session(pid=8)
    a, b = SessionEncoder(first), SessionEncoder(second)
    records = list(RECORDS.values())
    chunks = [
        (a, a.encode(first, records[:5])[0]),
        (b, b.encode(second, records[:3])[0]),
        (a, a.encode(first, records[5:])[0]),
    ]
    # WHEN they are encoded as one request
    request = ExportTraceServiceRequest.FromString(encode_request(chunks))
    # THEN there is one ResourceSpans per process, with its resource, our scope, all its spans
    assert len(request.resource_spans) == 2
    pids = [
        {kv.key: kv.value for kv in rs.resource.attributes}["process.pid"].int_value
        for rs in request.resource_spans
    ]
    assert pids == [7, 8]
    counts = [len(rs.scope_spans[0].spans) for rs in request.resource_spans]
    assert counts == [len(records), 3]
    scope = request.resource_spans[0].scope_spans[0].scope
    assert (scope.name, scope.version) == ("async-inspect", "0.1.0")
    # AND the whole request equals the SDK's for the same spans
    theirs = normalized(sdk_request(first, records))
    assert normalized(request).resource_spans[0] == theirs.resource_spans[0]


def test_resource_attributes_are_those_of_the_session() -> None:
    s = session()
    request = our_request(s, [record()])
    resource = {kv.key: kv.value for kv in request.resource_spans[0].resource.attributes}
    assert resource["service.name"].string_value == "shop"
    assert resource["service.version"].string_value == "1.2"
    assert resource["team"].string_value == "core"
    assert resource["process.command_line"].string_value == "python shop.py --port 80"
    assert list(resource) == list(s.resource.attributes)


@pytest.mark.parametrize(
    "bad",
    [
        record(events=(77, 10_000, None)),  # unknown event kind
        record(events=(wire.EVENT_POLL, 1.5, None)),  # a time that is not an int
        record(busy="lots"),
        record(remote=("x", 1), parent=0),
        record(link=("a", "b")),
    ],
)
def test_malformed_records_are_counted_and_skipped_like_the_sdk_path_does(bad: tuple) -> None:
    s = session()
    encoder = SessionEncoder(s)
    spans, malformed = encoder.encode(s, [record(), bad, record(id=6)])
    assert malformed == 1 and len(spans) == 2
    with pytest.raises(MALFORMED):
        build_span(s, bad)


def test_span_names_follow_the_rules_and_the_name_cap() -> None:
    # GIVEN a rule renaming handle, and codes learned after the first spans
    s = session(rules=[Rule("shop:handle", name="handle_order")])
    encoder = SessionEncoder(s)
    spans, _ = encoder.encode(s, [record(), record(code=3)])
    names = [ExportTraceServiceRequest.FromString(encode_request([(encoder, [x])])) for x in spans]
    assert [r.resource_spans[0].scope_spans[0].spans[0].name for r in names] == [
        "handle_order",
        "code-3",
    ]
    # WHEN the unknown code is described later, its spans get its name
    s.add_codes([(3, "late", "/app/late.py", 1, "late")])
    spans, _ = encoder.encode(s, [record(code=3)])
    request = ExportTraceServiceRequest.FromString(encode_request([(encoder, spans)]))
    assert request.resource_spans[0].scope_spans[0].spans[0].name == "late"
