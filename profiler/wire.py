"""The one format the agent and the collector share: versioned, length-prefixed frames.

A frame is an 8-byte header followed by a body:

    magic b"AI" | version u8 | kind u8 | body length u32 (network order) | body

The body is `marshal` data restricted to None, bool, int, float, str, bytes, tuple,
list and dict (marshal is in every CPython and ~10x faster than json in the target,
where every microsecond is someone else's). The reader never trusts it: `decode_body`
checks the shape of every kind and raises `WireError` on anything else.

This module is loaded inside target processes too (under the agent's private package
name), so it imports only the standard library and does no I/O.
"""

from __future__ import annotations

import marshal
import operator
import struct
from collections.abc import Callable
from typing import Any, Final

__all__ = [
    "AGENT_KINDS",
    "COLLECTOR_KINDS",
    "EVENT_NAMES",
    "HEADER",
    "MAX_BODY",
    "ORPHANED",
    "RENDEZVOUS_PREFIX",
    "SPAN_BOUNDS_MS",
    "SPAN_BOUNDS_NS",
    "SPAN_BUCKETS",
    "STATE_NAMES",
    "VERSION",
    "FrameDecoder",
    "WireError",
    "decode_body",
    "encode_frame",
    "frame_of",
    "task_name",
]

MAGIC: Final = b"AI"
VERSION: Final = 1
HEADER: Final = struct.Struct("!2sBBI")
MAX_BODY: Final = 64 * 1024 * 1024
# The private folder a collector makes in an attached target's /tmp for its socket; the
# agent removes it itself when it stops because that collector went away (ORPHANED).
RENDEZVOUS_PREFIX: Final = "async-inspect-"
ORPHANED: Final = "collector gone"  # BYE reason, had the collector still been there

# Frame kinds, agent -> collector.
BOOT: Final = 1  # bootstrap: {"pid", "version", "token", ...}; asks for the agent payload
HELLO: Final = 2  # agent running: process facts, clock anchor, tool id
CODES: Final = 3  # [(code_id, qualname, filename, firstlineno, module), ...]
SPANS: Final = 4  # [span tuple, ...], see SPAN_* below
STATS: Final = 5  # {"dropped": {reason: n}, "live_spans": n, ...}
ERROR: Final = 6  # (code, message): the agent could not start or had to stop
BYE: Final = 7  # {"reason": str}: the agent stopped; nothing follows

# Frame kinds, collector -> agent.
PAYLOAD: Final = 64  # {"modules": {name: (source, is_package)}, "settings": {...}}
STOP: Final = 65  # {"reason": str}: detach

AGENT_KINDS: Final = frozenset({BOOT, HELLO, CODES, SPANS, STATS, ERROR, BYE})
COLLECTOR_KINDS: Final = frozenset({PAYLOAD, STOP})

# Span tuple layout (agent -> collector). Times are the agent's perf_counter_ns; the
# HELLO clock anchor converts them to wall-clock time.
SPAN_ID: Final = 0  # int > 0, unique per agent
SPAN_PARENT: Final = 1  # span id of the parent in this trace, 0 for a root
SPAN_TRACE: Final = 2  # span id of the trace's root span (agent-local trace key)
SPAN_TASK: Final = 3  # task id, unique per agent (0: not in a task)
SPAN_CODE: Final = 4  # code id, see CODES
SPAN_THREAD: Final = 5  # native thread id
SPAN_START: Final = 6  # perf ns
SPAN_END: Final = 7  # perf ns
SPAN_STATE: Final = 8  # STATE_*
SPAN_POLLS: Final = 9  # times the coroutine's frame was resumed (first start included)
SPAN_BUSY: Final = 10  # ns the frame actually ran
SPAN_EVENTS: Final = 11  # flat tuple: event kind, perf ns, detail (str or None), ...
SPAN_EVENTS_DROPPED: Final = 12
SPAN_ERROR: Final = 13  # None or (type name, message, stacktrace)
SPAN_TASK_NAME: Final = 14  # asyncio task name on a task's first span (see task_name), else None
SPAN_PARENT_TASK: Final = 15  # task id of the task that created this span's task, or 0
SPAN_LINK: Final = 16  # None, or (trace key, span id) of the span a root was split from
SPAN_REMOTE_PARENT: Final = 17  # None, or (trace id, span id) of the app's own OTel parent
# span; span id 0 on the descendants of such a span: the trace id alone.
SPAN_FLAGS: Final = 18  # FLAG_* bits
SPAN_ATTRS: Final = 19  # None, or ((key, str value), ...) captured by a rule from arguments
SPAN_FIELDS: Final = 20

FLAG_TASK_ROOT: Final = 1  # the first application span of an asyncio task
FLAG_START_UNKNOWN: Final = 2  # adopted when the agent started: began before that
FLAG_IN_FLIGHT: Final = 4  # flushed before it finished (state RUNNING or BLOCKED)

STATE_COMPLETED: Final = 1
STATE_FAILED: Final = 2
STATE_CANCELLED: Final = 3
STATE_RUNNING: Final = 4
STATE_BLOCKED: Final = 5
STATE_NAMES: Final = {
    STATE_COMPLETED: "completed",
    STATE_FAILED: "failed",
    STATE_CANCELLED: "cancelled",
    STATE_RUNNING: "running",
    STATE_BLOCKED: "blocked",
}

EVENT_POLL: Final = 1
EVENT_WAKE: Final = 2
EVENT_BLOCKED: Final = 3
EVENT_COMPLETED: Final = 4
EVENT_FAILED: Final = 5
EVENT_CANCELLED: Final = 6
EVENT_NAMES: Final = {
    EVENT_POLL: "poll",
    EVENT_WAKE: "wake",
    EVENT_BLOCKED: "blocked",
    EVENT_COMPLETED: "completed",
    EVENT_FAILED: "failed",
    EVENT_CANCELLED: "cancelled",
}


# Span metrics are aggregated in the agent, for every span (sampled or not), into one
# histogram per (code id, state) over these bounds: the union of the OpenTelemetry spanmetrics
# connector's default buckets (ms) and Tempo's (2 ms * 2^k), so the collector can serve
# either naming exactly. STATS carries them as {"spans": [(code id, state, count, sum ns,
# bucket counts...), ...]} with len(SPAN_BOUNDS_NS) + 1 buckets, cumulative since start.
SPAN_BOUNDS_MS: Final = (
    2, 4, 6, 8, 10, 16, 32, 50, 64, 100, 128, 200, 256, 400, 512, 800, 1000, 1024, 1400,
    2000, 2048, 4096, 5000, 8192, 10000, 15000, 16384,
)  # fmt: skip
SPAN_BOUNDS_NS: Final = tuple(ms * 1_000_000 for ms in SPAN_BOUNDS_MS)
SPAN_BUCKETS: Final = len(SPAN_BOUNDS_NS) + 1


class WireError(ValueError):
    """A frame or body that does not follow this format."""


def task_name(value: object) -> str:
    """A span's SPAN_TASK_NAME as asyncio's get_name() gives it. The compiled agent sends a
    default name as the int N that C's asyncio.Task keeps until get_name() formats it."""
    return f"Task-{value}" if type(value) is int else str(value)


def encode_frame(kind: int, body: Any) -> bytes:
    """Return one complete frame carrying `body` (marshal-able plain data)."""
    return frame_of(kind, marshal.dumps(body))


def frame_of(kind: int, data: bytes) -> bytes:
    """Return one complete frame around `data`, a body already in marshal's format."""
    if len(data) > MAX_BODY:
        raise WireError(f"frame body of {len(data)} bytes exceeds {MAX_BODY}")
    return HEADER.pack(MAGIC, VERSION, kind, len(data)) + data


class FrameDecoder:
    """Splits a byte stream into (kind, body) pairs; feed it whatever recv() returned.

    `check_spans(spans) -> index or -1` may stand in for _check_span over a SPANS body (the
    collector's compiled one); the span it points at is explained (WireError) here."""

    def __init__(
        self,
        allowed_kinds: frozenset[int],
        check_spans: Callable[[list[Any]], int] | None = None,
    ) -> None:
        self._buffer = bytearray()
        self._allowed = allowed_kinds
        self._check_spans = check_spans

    def feed(self, data: bytes) -> list[tuple[int, Any]]:
        """Add bytes; return every complete, validated frame. Raises WireError."""
        self._buffer += data
        frames: list[tuple[int, Any]] = []
        view = self._buffer
        offset = 0
        while len(view) - offset >= HEADER.size:
            magic, version, kind, length = HEADER.unpack_from(view, offset)
            if magic != MAGIC:
                raise WireError(f"bad magic {bytes(magic)!r}: not an async-inspect stream")
            if version != VERSION:
                raise WireError(f"wire version {version} is not supported (expected {VERSION})")
            if kind not in self._allowed:
                raise WireError(f"unexpected frame kind {kind}")
            if length > MAX_BODY:
                raise WireError(f"frame body of {length} bytes exceeds {MAX_BODY}")
            end = offset + HEADER.size + length
            if len(view) < end:
                break
            with memoryview(view)[offset + HEADER.size : end] as raw:  # read in place
                try:
                    body = marshal.loads(raw)
                except (EOFError, ValueError, TypeError) as exc:
                    raise WireError(f"undecodable body in frame kind {kind}: {exc}") from None
            offset = end
            frames.append((kind, decode_body(kind, body, self._check_spans)))
        del self._buffer[:offset]
        return frames

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a complete frame."""
        return len(self._buffer)


_PLAIN = (type(None), bool, int, float, str, bytes)


def _check_plain(value: Any, depth: int = 0) -> None:
    if isinstance(value, _PLAIN):
        return
    if depth > 8:
        raise WireError("body nested too deeply")
    if isinstance(value, (tuple, list)):
        for item in value:
            _check_plain(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise WireError(f"dict key of type {type(key).__name__}")
            _check_plain(item, depth + 1)
    else:
        raise WireError(f"value of type {type(value).__name__} not allowed")


def _require(condition: bool, kind: int, what: str) -> None:
    if not condition:
        raise WireError(f"frame kind {kind}: {what}")


_SPAN_INTS = (SPAN_ID, SPAN_PARENT, SPAN_TRACE, SPAN_TASK, SPAN_CODE, SPAN_START, SPAN_END)
_span_ints = operator.itemgetter(*_SPAN_INTS)
_INT = {int}


def _check_span(kind: int, span: Any) -> None:
    # One expression for the common, valid span (the collector checks tens of thousands a
    # second: this takes two thirds of the time the step-by-step checks did); the messages
    # are only put together for a bad one.
    if (
        isinstance(span, tuple)
        and len(span) == SPAN_FIELDS
        and set(map(type, _span_ints(span))) == _INT
        and type(state := span[SPAN_STATE]) is int
        and state in STATE_NAMES
        and type(events := span[SPAN_EVENTS]) is tuple
        and len(events) % 3 == 0
        and ((error := span[SPAN_ERROR]) is None or (isinstance(error, tuple) and len(error) == 3))
        and ((link := span[SPAN_LINK]) is None or (type(link) is tuple and len(link) == 2))
        and (
            (remote := span[SPAN_REMOTE_PARENT]) is None
            or (type(remote) is tuple and len(remote) == 2)
        )
        and (span[SPAN_ATTRS] is None or type(span[SPAN_ATTRS]) is tuple)
    ):
        return
    _explain_bad_span(kind, span)


def _explain_bad_span(kind: int, span: Any) -> None:
    _require(isinstance(span, tuple) and len(span) == SPAN_FIELDS, kind, "span is not a tuple")
    for index in _SPAN_INTS:
        _require(type(span[index]) is int, kind, f"span field {index} is not an int")
    state = span[SPAN_STATE]
    _require(type(state) is int and state in STATE_NAMES, kind, "unknown span state")
    events = span[SPAN_EVENTS]
    _require(type(events) is tuple and len(events) % 3 == 0, kind, "span events are not triplets")
    # Event kinds and times are checked where they are read (collector.spans), which drops
    # a span with a bad event instead of the whole frame.
    error = span[SPAN_ERROR]
    _require(error is None or (isinstance(error, tuple) and len(error) == 3), kind, "bad error")
    for index in (SPAN_LINK, SPAN_REMOTE_PARENT):
        pair = span[index]
        _require(pair is None or (type(pair) is tuple and len(pair) == 2), kind, "bad link")
    attrs = span[SPAN_ATTRS]
    _require(attrs is None or type(attrs) is tuple, kind, "span attributes are not a tuple")
    raise AssertionError("_check_span and _explain_bad_span disagree")  # one check failed


def decode_body(kind: int, body: Any, check_spans: Callable[[list[Any]], int] | None = None) -> Any:
    """Validate a decoded body for its frame kind and return it. Raises WireError.
    `check_spans` (see FrameDecoder) stands in for _check_span over a SPANS body."""
    if kind in (SPANS, CODES):
        _require(isinstance(body, list), kind, "body is not a list")
        if kind == SPANS and check_spans is not None:
            bad = check_spans(body)
            if bad >= 0:
                _explain_bad_span(kind, body[bad])
            return body
        for item in body:
            if kind == SPANS:
                _check_span(kind, item)
            else:
                _require(isinstance(item, tuple) and len(item) == 5, kind, "bad code entry")
                _require(type(item[0]) is int and type(item[3]) is int, kind, "bad code ids")
                _require(all(type(part) is str for part in item[1:3]), kind, "bad code names")
                _require(type(item[4]) is str, kind, "bad code module")
        return body
    if kind == ERROR:
        _require(isinstance(body, tuple) and len(body) == 2, kind, "body is not (code, message)")
        _require(all(isinstance(part, str) for part in body), kind, "error parts are not str")
        return body
    _require(isinstance(body, dict), kind, "body is not a dict")
    _check_plain(body)
    return body
