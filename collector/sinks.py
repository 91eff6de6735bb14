"""Where finished spans go: OTLP, the terminal, a JSON-lines file, or all of them."""

from __future__ import annotations

from typing import Protocol

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

__all__ = ["ProcessorSink", "SpanSink"]


class SpanSink(Protocol):
    """Receives every span the collector builds, on the collector's event loop thread."""

    def on_span(self, span: ReadableSpan) -> None:
        """Take one finished span; must not block."""

    def flush(self, timeout_s: float) -> bool:
        """Push out everything received so far; True if it all went."""

    def shutdown(self) -> None:
        """Flush and release resources; called once."""


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
