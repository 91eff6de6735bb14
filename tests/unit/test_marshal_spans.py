"""The sender's SPANS body written in C from compiled spans: marshal data that reads back as
the wire records spans.to_wire makes, for every type a record holds; anything else is left
to marshal."""

from __future__ import annotations

import marshal
import subprocess
from typing import Any

import pytest

from profiler import wire
from profiler.agent import accelerator
from profiler.agent import spans as S
from profiler.agent.codefilter import CodeFilter
from profiler.agent.monitoring import claim_tool_id
from profiler.agent.settings import AgentSettings
from tests.conftest import INTERPRETERS

COMPILED, WHY = accelerator.available()
pytestmark = pytest.mark.skipif(not COMPILED, reason=f"no compiled callbacks: {WHY}")


def span(**fields: Any) -> S.Span:
    """A finished span as the compiled tracker keeps it; `NAME=value` sets spans.NAME."""
    made = S.new_span(7, 3, 1, 2, 5, 4242, 1_000_000_000_000, 0, True, None, None)
    made[S.END], made[S.STATE], made[S.BUSY], made[S.POLLS] = 1_000_050_000_000, 1, 40_000, 2
    made[S.EVENTS] = [1, 1_000_000_000_000, None, 3, 1_000_000_100_000, "Future", 4, 7, None]
    for name, value in fields.items():
        made[getattr(S, name)] = value
    return _compiled_span(made)


def _compiled_span(fields: S.Span) -> S.Span:
    from profiler.agent import _accel

    compiled: S.Span = _accel.Span(fields)  # type: ignore[assignment]
    return compiled


def plain() -> list[S.Span]:
    """Spans of every type a record holds."""
    return [
        span(),
        span(EVENTS=None, TASK_NAME="Task-12", PARENT_TASK=9),
        span(TASK_NAME=12, START=2**32, END=2**45 + 2**30 + 7, THREAD=-(2**47) - 3),
        span(EVENTS=[], TASK_NAME="tâche ✓ " * 40, ERROR=("ValueError", "bad", "Traceback...")),
        span(ID=2**63 - 1, TRACE=-(2**63), START=2**31, END=-(2**31) - 1, BUSY=2**31 - 1),
        span(ID=-1, PARENT_ID=-(2**31), TASK=2**62, THREAD=0, POLLS=-(2**40)),
        span(LINK=(1, 2), REMOTE=(2**127 + 5, 2**63 + 1), FLAGS=3, EVENTS_DROPPED=4),
        span(REMOTE=(-(2**100) - 7, 2**64), ID=-(2**63)),
        span(ATTRS=(("user", "ann"), ("n", 3), ("ok", True), ("no", False), ("x", 1.5),
                    ("b", b"raw"), ("many", (1, "two", 3.0)), ("nan", float("inf")))),
        span(TASK_NAME="a" * 300, EVENTS=[1, 5, "z" * 255, 2, 6, "é" * 200] * 50),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def hooks() -> Any:
    settings = AgentSettings()
    tool = claim_tool_id("async-inspect-test")
    try:
        tracker, _ = accelerator.new_tracker(settings, CodeFilter(settings), tool)
        assert isinstance(tracker, accelerator.AcceleratedTracker)
        yield tracker._hooks
    finally:
        import sys

        sys.monitoring.free_tool_id(tool)


def test_the_c_body_reads_back_as_the_wire_records(hooks: Any) -> None:
    PLAIN = plain()
    body = hooks.marshal_spans(PLAIN)
    assert body is not None
    assert marshal.loads(body) == [S.to_wire(s) for s in PLAIN]
    # AND each record alone, and none at all
    for one in PLAIN:
        assert marshal.loads(hooks.marshal_spans([one])) == [S.to_wire(one)]
    assert marshal.loads(hooks.marshal_spans([])) == []


@pytest.mark.parametrize("version", ["3.12", "3.13", "3.14"])
def test_every_python_the_collector_runs_on_reads_the_body(hooks: Any, version: str) -> None:
    # GIVEN a body of every type a record holds, its ints beyond 32 bits written as 8 bytes
    # ('I', which marshal.loads reads but marshal.dumps no longer writes)
    if version not in INTERPRETERS:
        pytest.skip(f"no CPython {version} here (.ci/run installs 3.12, 3.13 and 3.14)")
    PLAIN = plain()
    body = hooks.marshal_spans(PLAIN)
    assert b"I" + (2**45 + 2**30 + 7).to_bytes(8, "little") in body
    # WHEN that Python's marshal reads it
    read = subprocess.run(
        [INTERPRETERS[version], "-c",
         "import marshal, sys; print(repr(marshal.loads(sys.stdin.buffer.read())))"],
        input=body, capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    # THEN it reads the wire records
    assert read.stdout.decode().strip() == repr([S.to_wire(s) for s in PLAIN])


@pytest.mark.parametrize(
    "odd",
    [
        {"ATTRS": (("big", 2**300),)},  # beyond what a record holds (trace ids are 128 bits)
        {"TASK_NAME": "\ud800"},  # a lone surrogate
        {"ATTRS": (("set", frozenset({1})),)},  # not a record's type
        {"ATTRS": (("deep", ((((((((1,),),),),),),),)),)},  # nested too deep
    ],
)
def test_an_unusual_value_is_left_to_marshal(hooks: Any, odd: dict[str, Any]) -> None:
    assert hooks.marshal_spans([span(), span(**odd)]) is None
    # AND so is a span that is not a compiled one
    as_list = S.new_span(7, 3, 1, 2, 5, 6, 8, 0, True, None, None)
    assert hooks.marshal_spans([span(), as_list]) is None


def test_a_compiled_span_reads_and_writes_like_the_list() -> None:
    # GIVEN a compiled span made from a list
    fields = S.new_span(7, 3, 1, 2, 5, 6, 8, 0, True, None, None)
    fields[S.LINK] = (1, 2)
    made = _compiled_span(fields)
    # THEN it reads back position by position, slices included
    assert list(made) == fields and made[: wire.SPAN_FIELDS] == fields[: wire.SPAN_FIELDS]
    assert made[-1] == fields[-1] and len(made) == S.FIELDS
    # AND the events are a copy: written back by assignment, as `span[EVENTS] += ...` does
    made[S.EVENTS] += (wire.EVENT_BLOCKED, 9, "Future")
    assert made[S.EVENTS] == [wire.EVENT_POLL, 8, None, wire.EVENT_BLOCKED, 9, "Future"]
    made[S.EVENTS] = None
    assert made[S.EVENTS] is None
    # AND an int field holds 64 bits, events come in triples, fields are never deleted
    with pytest.raises(OverflowError):
        made[S.ID] = 2**64
    with pytest.raises(ValueError):
        made[S.EVENTS] = [1, 2]
    with pytest.raises(TypeError):
        del made[S.ID]
    with pytest.raises(IndexError):
        made[S.FIELDS] = 0


def test_the_sender_frame_is_the_same_either_way() -> None:
    # GIVEN the two trackers' frames for the same spans, one with a value only marshal writes
    settings = AgentSettings()
    tool = claim_tool_id("async-inspect-test")
    try:
        tracker, _ = accelerator.new_tracker(settings, CodeFilter(settings), tool)
        for spans in (plain(), [*plain(), span(ATTRS=(("big", 2**300),))]):
            frame = tracker.spans_frame(spans)
            # THEN the collector decodes both to the same records
            ((kind, body),) = wire.FrameDecoder(wire.AGENT_KINDS).feed(frame)
            assert kind == wire.SPANS and body == [S.to_wire(s) for s in spans]
    finally:
        import sys

        sys.monitoring.free_tool_id(tool)
