"""The OTLP/gRPC exporter behind the SDK's batch processor, configured from Settings, and
watched: a failing endpoint becomes a counted, rate-limited warning naming it and why.

The SDK retries transient errors with backoff, then gives the batch up; its batch processor
drops spans once its queue is full. Both only log. `ExportWatch` takes those log records
(so they do not flood stderr), counts what was lost and says so at most every 30 s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from profiler.errors import ExportError

from .metrics import MetricsStore
from .settings import Settings

__all__ = ["ExportWatch", "build_processor"]

_SDK_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.sdk._shared_internal",
)
WARN_EVERY = 30.0


class ExportWatch(logging.Handler):
    """Counts export losses and turns the SDK's log lines into our warnings."""

    def __init__(self, endpoint: str, warn: Callable[[str], None], metrics: MetricsStore) -> None:
        super().__init__(logging.WARNING)
        self.endpoint = endpoint
        self.warn = warn
        self.metrics = metrics
        metrics.exporters["otlp"] = 0
        self.spans_lost = 0
        self._last_warned: dict[str, float] = {}
        self._lock_counts = threading.Lock()

    def lost(self, count: int, reason: str) -> None:
        """`count` spans did not reach the endpoint."""
        with self._lock_counts:
            self.spans_lost += count
            failures = self.metrics.export_failures
            failures["otlp"] = failures.get("otlp", 0) + 1
        self._say(reason)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.msg if isinstance(record.msg, str) else ""
        args = record.args if isinstance(record.args, tuple) else ()
        if message.startswith("Queue full"):
            with self._lock_counts:
                self.spans_lost += 1
            self._say("the export queue is full (the endpoint is slower than the spans come)")
        elif message.startswith("Transient error") and len(args) >= 5:
            self._say(f"{_code(args[0])} ({args[4]}), retrying with backoff")
        elif message.startswith("Failed to export") and len(args) >= 4:
            self._say(f"{_code(args[2])} ({args[3]})")
        elif record.levelno >= logging.ERROR:
            self._say(record.getMessage().split("\n", 1)[0])

    def _say(self, reason: str) -> None:
        now = time.monotonic()
        kind = reason.split(" ", 1)[0]
        if now - self._last_warned.get(kind, -WARN_EVERY) < WARN_EVERY:
            return
        self._last_warned[kind] = now
        lost = f"; {self.spans_lost} spans lost so far" if self.spans_lost else ""
        self.warn(f"export to {self.endpoint} failing: {reason}{lost}")

    def install(self) -> None:
        """Take over the SDK's exporter and batch-processor loggers."""
        for name in _SDK_LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(self)
            logger.propagate = False

    def uninstall(self) -> None:
        """Give the loggers back."""
        for name in _SDK_LOGGERS:
            logger = logging.getLogger(name)
            logger.removeHandler(self)
            logger.propagate = True


def _code(value: object) -> str:
    return str(getattr(value, "name", value))


class _CountingExporter(SpanExporter):
    """Delegates to the OTLP exporter and reports every batch it had to give up."""

    def __init__(self, inner: SpanExporter, watch: ExportWatch) -> None:
        self.inner = inner
        self.watch = watch

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        if result is not SpanExportResult.SUCCESS:
            self.watch.lost(len(spans), "a batch was given up after retries")
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def build_processor(settings: Settings, watch: ExportWatch) -> BatchSpanProcessor:
    """A BatchSpanProcessor exporting to `settings.endpoint` (which must be set)."""
    endpoint = settings.endpoint
    if endpoint is None:
        raise ExportError("no OTLP endpoint configured")
    insecure = settings.insecure
    if insecure is None:
        insecure = endpoint.startswith("http://")
    credentials = None
    if not insecure:
        root_certificates = None
        if settings.certificate:
            try:
                with open(settings.certificate, "rb") as handle:
                    root_certificates = handle.read()
            except OSError as exc:
                raise ExportError(
                    f"cannot read the CA certificate {settings.certificate}: {exc.strerror}",
                    "check OTEL_EXPORTER_OTLP_CERTIFICATE / --certificate",
                ) from None
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
    exporter = OTLPSpanExporter(
        endpoint=endpoint,
        insecure=insecure,
        credentials=credentials,
        headers=dict(settings.headers) or None,
        timeout=settings.export_timeout,
        compression=grpc.Compression.Gzip
        if settings.compression == "gzip"
        else grpc.Compression.NoCompression,
    )
    return BatchSpanProcessor(
        _CountingExporter(exporter, watch),
        max_queue_size=settings.max_queue_size,
        schedule_delay_millis=settings.export_interval * 1000,
        max_export_batch_size=settings.max_export_batch_size,
        export_timeout_millis=settings.bsp_export_timeout * 1000,
    )
