"""`--output FILE`: every span as one JSON object per line, flushed as it arrives."""

from __future__ import annotations

import json
from typing import Any, TextIO

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

__all__ = ["JsonLinesWriter", "span_to_dict"]


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    """A self-contained, JSON-ready description of a span (ids in hex, times in ns)."""
    context = span.context
    start, end = span.start_time or 0, span.end_time or 0
    return {
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "start_time_unix_nano": start,
        "end_time_unix_nano": end,
        "duration_ms": round((end - start) / 1e6, 3),
        "status": {
            "code": "ERROR" if span.status.status_code is StatusCode.ERROR else "UNSET",
            "description": span.status.description or "",
        },
        "attributes": dict(span.attributes or {}),
        "events": [
            {
                "name": event.name,
                "time_unix_nano": event.timestamp,
                "offset_ms": round((event.timestamp - start) / 1e6, 3),
                "attributes": dict(event.attributes or {}),
            }
            for event in span.events
        ],
        "links": [
            {
                "trace_id": f"{link.context.trace_id:032x}",
                "span_id": f"{link.context.span_id:016x}",
                "attributes": dict(link.attributes or {}),
            }
            for link in span.links
        ],
        "resource": dict(span.resource.attributes) if span.resource else {},
    }


class JsonLinesWriter:
    """A span sink writing JSON lines to an open text stream."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.written = 0

    def on_span(self, span: ReadableSpan) -> None:
        """Write the span as one line."""
        self._stream.write(json.dumps(span_to_dict(span), separators=(",", ":")) + "\n")
        self.written += 1

    def flush(self, timeout_s: float = 0.0) -> bool:
        """Flush the stream."""
        self._stream.flush()
        return True

    def shutdown(self) -> None:
        """Flush and close the stream."""
        self._stream.flush()
        self._stream.close()
