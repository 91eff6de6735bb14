"""Where finished spans go: OTLP, the terminal, a JSON-lines file, or all of them."""

from __future__ import annotations

import importlib
from typing import Protocol

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from profiler.errors import ConfigError

__all__ = ["ProcessorSink", "SpanSink", "load_span_processor"]


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
