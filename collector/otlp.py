"""The OTLP/gRPC exporter behind a batch processor, configured from Settings."""

from __future__ import annotations

import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from profiler.errors import ExportError

from .settings import Settings

__all__ = ["build_processor"]


def build_processor(settings: Settings) -> BatchSpanProcessor:
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
        exporter,
        max_queue_size=settings.max_queue_size,
        schedule_delay_millis=settings.export_interval * 1000,
        max_export_batch_size=settings.max_export_batch_size,
        export_timeout_millis=settings.bsp_export_timeout * 1000,
    )
