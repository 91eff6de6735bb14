"""The wire format: round trips, and malformed frames rejected with a clear WireError."""

from __future__ import annotations

import itertools
import marshal
import struct
from typing import Any

import pytest

from collector.accelerated import compiled, span_checker
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
    # AND so does the collector's decoder, with its compiled check if it has one
    frame = wire.encode_frame(wire.SPANS, [span(), *body])
    with pytest.raises(wire.WireError, match=message):
        wire.FrameDecoder(wire.AGENT_KINDS, span_checker()).feed(frame)


ODD_VALUES: list[Any] = [None, 0, 1, True, 1.5, "x", b"x", (), (1, 2), (1, 2, 3), (1,) * 6,
                         [1, 2], {}, 2**70, -1, [1, 2, 3]]  # fmt: skip


@pytest.mark.skipif(not compiled()[0], reason=f"no compiled span check: {compiled()[1]}")
def test_the_compiled_span_check_agrees_with_the_python_one() -> None:
    # GIVEN every field of a valid span replaced, one and two at a time, by odd values
    variants = [span(), span()[:-1], list(span()), "span", None, (*span(), 1)]
    for index, value in itertools.product(range(wire.SPAN_FIELDS), ODD_VALUES):
        variants.append(span(**{f"f{index}": value}))
    for (first, second), value in zip(
        itertools.combinations(range(wire.SPAN_FIELDS), 2), itertools.cycle(ODD_VALUES)
    ):
        variants.append(span(**{f"f{first}": value, f"f{second}": (value, 1)}))
    checker = span_checker()
    assert checker is not None

    def python_accepts(candidate: Any) -> bool:
        try:
            wire.decode_body(wire.SPANS, [candidate])
        except wire.WireError:
            return False
        return True

    # WHEN each is checked by both THEN they agree, and each refused one is pointed at
    verdicts = [python_accepts(candidate) for candidate in variants]
    assert [checker([candidate]) == -1 for candidate in variants] == verdicts
    assert 100 < verdicts.count(False) < len(variants) - 100  # both kinds well represented
    assert checker([span(), span(), span(f8=99), span(f8="x")]) == 2


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
