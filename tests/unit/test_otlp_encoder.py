"""The OTLP encoder: records encoded straight to protobuf bytes parse back to exactly what the
SDK path (ReadableSpan + OpenTelemetry's own encoder) produces for the same records."""

from __future__ import annotations

import random
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.accelerated import compiled
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
             "busy": wire.SPAN_BUSY, "trace": wire.SPAN_TRACE,
             "polls": wire.SPAN_POLLS}  # fmt: skip
    for name, value in changes.items():
        fields[names[name]] = value
    return tuple(fields)


RECORDS = {
    "child": record(),
    "task root": record(
        parent=0, task_name="Task-7", parent_task=2, flags=wire.FLAG_TASK_ROOT, thread=-1
    ),
    "default task name, as its number": record(task_name=7, flags=wire.FLAG_TASK_ROOT),
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


def writer_variants() -> list[tuple[Any, ...]]:
    """RECORDS, records at the edges of what the compiled writer takes, and random mixes."""
    edges = [
        record(thread=-(1 << 63)), record(thread=(1 << 63) - 1), record(thread=1 << 63),
        record(task_name="tâche ✓"), record(task_name="\ud800"), record(task_name=5),
        record(task_name=-(1 << 63)), record(task_name=1 << 64), record(task_name=True),
        record(parent_task=9, dropped=3, flags=wire.FLAG_START_UNKNOWN | wire.FLAG_TASK_ROOT),
        record(attrs=()), record(attrs=(("k", "v"),)), record(busy=-5), record(busy=1 << 62),
        record(events=(wire.EVENT_BLOCKED, 20_000, ["unhashable"])), record(start=-(1 << 62)),
        record(end=1 << 62), record(id=-3, parent=-(1 << 63), trace=(1 << 63) - 1),
        record(code=2), record(code=99), record(events=(wire.EVENT_POLL, True, None)),
        record(events=(wire.EVENT_POLL, 5, None, 77, 6, None)), record(state=99),
        record(state=True), record(dropped=1.5), record(events=(wire.EVENT_POLL, -(1 << 62), None)),
    ]  # fmt: skip
    rng = random.Random(11)
    pools: dict[str, list[Any]] = {
        "id": [1, 2, 77, 1 << 40], "parent": [0, 1, 5], "code": [1, 1, 1, 2, 3],
        "thread": [4242, 0, -1], "task": [1, 3, 1 << 33], "state": [1, 1, 2, 3, 4],
        "dropped": [0, 0, 4], "task_name": [None, None, "Task-9", "", 9], "parent_task": [0, 2],
        "flags": [0, 1, 2, 3, 5], "busy": [0, 400_000, 3_000_000_000],
        "start": [0, 10_000, 999_999_999_999], "end": [0, 2_510_000, 1 << 50],
        "events": [(), RECORDS["child"][wire.SPAN_EVENTS],
                   (wire.EVENT_BLOCKED, 1, "task fetch-3", wire.EVENT_WAKE, 2, None)],
    }  # fmt: skip
    mixes = [record(**{k: rng.choice(v) for k, v in pools.items()}) for _ in range(400)]
    return [*RECORDS.values(), *edges, *mixes]


@pytest.mark.skipif(not compiled()[0], reason=f"no compiled span writer: {compiled()[1]}")
def test_the_compiled_writer_writes_what_python_writes_byte_for_byte() -> None:
    # GIVEN a session with a rule replacing a per-span attribute (such spans go to Python)
    rule = Rule("db:Db.query", name="db_query", attributes={"op": "read", "thread.id": 0})
    s = session(rules=[rule])
    python, ours = SessionEncoder(s), SessionEncoder(s)
    python._writer = None
    records = writer_variants()
    # WHEN both encode the same records, twice (once every function has been built)
    for _ in range(2):
        # THEN the bytes are the same, and so is the count of malformed records
        assert ours.encode(s, records) == python.encode(s, records)
    # AND the compiled writer wrote its share itself: the common record, most random ones
    assert ours._writer is not None
    written = ours._writer.encode(records)
    assert written[0] is not None  # RECORDS["child"]
    default_name = list(RECORDS).index("default task name, as its number")
    assert written[default_name] is not None
    assert sum(span is not None for span in written) > len(records) // 3
