"""Where finished spans go: OTLP, the terminal, a JSON-lines file, or all of them.

Two kinds of sink, both called on the collector's event loop thread:

* a `RecordSink` takes the agent's span records as they came (the OTLP exporter encodes
  them to protobuf itself);
* a `ReadableSpanSink` takes OpenTelemetry ReadableSpan objects (terminal trees, JSON lines,
  extra span processors). The hub builds those only when such a sink is configured.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from profiler.errors import ConfigError

from .session import ProcessSession

__all__ = ["ProcessorSink", "ReadableSpanSink", "RecordSink", "SpanSink", "load_span_processor"]


class ReadableSpanSink(Protocol):
    """Receives every span as a ReadableSpan."""

    def on_span(self, span: ReadableSpan) -> None:
        """Take one finished span; must not block."""

    def flush(self, timeout_s: float) -> bool:
        """Push out everything received so far; True if it all went."""

    def shutdown(self) -> None:
        """Flush and release resources; called once."""


@runtime_checkable
class RecordSink(Protocol):
    """Receives the span records of each SPANS frame, with the session they came from."""

    def on_records(self, session: ProcessSession, records: list[tuple[Any, ...]]) -> int:
        """Take a frame's records; must not block. Returns how many were malformed."""

    def backlogged(self, count: int) -> bool:
        """True while `count` more records would not all fit but its endpoint is answering:
        worth the ingest loop waiting a moment rather than dropping some."""

    def flush(self, timeout_s: float) -> bool:
        """Push out everything received so far; True if it all went."""

    def shutdown(self) -> None:
        """Flush and release resources; called once."""


SpanSink = ReadableSpanSink | RecordSink


class ProcessorSink:
    """A sink over an OpenTelemetry SpanProcessor (e.g. BatchSpanProcessor + OTLP exporter)."""

    def __init__(self, processor: SpanProcessor) -> None:
        self.processor = processor

    def on_span(self, span: ReadableSpan) -> None:
        """Hand the span to the processor (which queues it for export)."""
        self.processor.on_end(span)

    def flush(self, timeout_s: float) -> bool:
        """Ask the processor to export what it holds."""
        return self.processor.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Shut the processor (and its exporter) down."""
        self.processor.shutdown()


def load_span_processor(path: str) -> SpanProcessor:
    """Import `module:factory` (a SpanProcessor class or a function returning one) and call
    it: the spec's custom span processors, zero-code. ConfigError names what went wrong."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"span processor {path!r} is not module:factory")
    try:
        target: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"cannot load span processor {path}: {exc}",
            "is its module installed where async-inspect runs?",
        ) from None
    if not callable(target):
        raise ConfigError(f"span processor {path} is not callable")
    processor = target()
    if not all(hasattr(processor, name) for name in ("on_end", "shutdown", "force_flush")):
        raise ConfigError(f"{path}() did not return a SpanProcessor")
    return processor  # type: ignore[no-any-return]
