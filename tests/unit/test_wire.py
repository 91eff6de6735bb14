"""The wire format: round trips, and malformed frames rejected with a clear WireError."""

from __future__ import annotations

import marshal
import struct

import pytest

from profiler import wire
from profiler.agent import bootstrap


def span(**changes: object) -> tuple[object, ...]:
    """A valid wire span tuple; `f<index>=value` changes one field."""
    record: list[object] = [None] * wire.SPAN_FIELDS
    record[: wire.SPAN_FLAGS + 1] = [
        1,
        0,
        1,
        1,
        1,
        42,
        100,
        200,
        wire.STATE_COMPLETED,
        1,
        50,
        (wire.EVENT_POLL, 100, None),
        0,
        None,
        None,
        0,
        None,
        None,
        0,
    ]
    for index, value in changes.items():
        record[int(index.removeprefix("f"))] = value
    return tuple(record)


def test_frames_round_trip_across_arbitrary_chunking() -> None:
    frames = [
        (wire.HELLO, {"pid": 7}),
        (wire.SPANS, [span()]),
        (wire.CODES, [(1, "f", "a.py", 3, "m")]),
    ]
    data = b"".join(wire.encode_frame(kind, body) for kind, body in frames)
    decoder = wire.FrameDecoder(wire.AGENT_KINDS)
    received = []
    for i in range(0, len(data), 7):  # a stream delivers arbitrary pieces
        received += decoder.feed(data[i : i + 7])
    assert received == frames
    assert decoder.pending == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"XX\x01\x02\x00\x00\x00\x00", "bad magic"),
        (b"AI\x09\x02\x00\x00\x00\x00", "wire version 9"),
        (b"AI\x01\x63\x00\x00\x00\x00", "unexpected frame kind 99"),
        (struct.pack("!2sBBI", b"AI", 1, 2, wire.MAX_BODY + 1), "exceeds"),
        (struct.pack("!2sBBI", b"AI", 1, 2, 3) + b"\xff\xff\xff", "undecodable body"),
        (wire.HEADER.pack(b"AI", 1, wire.SPANS, 5) + marshal.dumps(7), "not a list"),
    ],
)
def test_malformed_frames_are_rejected(data: bytes, message: str) -> None:
    decoder = wire.FrameDecoder(wire.AGENT_KINDS)
    with pytest.raises(wire.WireError, match=message):
        decoder.feed(data)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([span()[:5]], "span is not a tuple"),
        ([span(f0="x")], "span field 0"),
        ([span(f8=99)], "unknown span state"),
        ([span(f11=(1, 2))], "triplets"),
        ([span(f13="oops")], "bad error"),
        ([span(f16=[1, 2])], "bad link"),
        ([span(f19=["k", "v"])], "attributes are not a tuple"),
    ],
)
def test_malformed_spans_are_rejected(body: list[object], message: str) -> None:
    with pytest.raises(wire.WireError, match=message):
        wire.decode_body(wire.SPANS, body)


def test_dict_bodies_may_hold_only_plain_data() -> None:
    with pytest.raises(wire.WireError, match="not allowed"):
        wire.decode_body(wire.HELLO, {"code": compile("1", "x", "eval")})
    with pytest.raises(wire.WireError, match="dict key"):
        wire.decode_body(wire.STATS, {1: 2})


def test_bootstrap_speaks_the_same_wire() -> None:
    # The bootstrap cannot import wire before the agent arrives: it mirrors the constants.
    assert bootstrap.HEADER.format == wire.HEADER.format
    assert (bootstrap.MAGIC, bootstrap.VERSION) == (wire.MAGIC, wire.VERSION)
    assert (bootstrap.BOOT, bootstrap.ERROR, bootstrap.PAYLOAD, bootstrap.STOP) == (
        wire.BOOT,
        wire.ERROR,
        wire.PAYLOAD,
        wire.STOP,
    )
