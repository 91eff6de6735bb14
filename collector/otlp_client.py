"""One OTLP/gRPC trace endpoint: the channel (TLS, compression, headers as the settings say)
and `export`, which sends a serialized ExportTraceServiceRequest and retries transient errors
with exponential backoff, as OpenTelemetry's own exporter does, within one deadline.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import grpc
from google.rpc.error_details_pb2 import RetryInfo  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from profiler.errors import ExportError

from .settings import Settings

__all__ = ["RETRYABLE", "ExportFailure", "OtlpClient"]

METHOD: Final = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
# The codes OpenTelemetry's exporters retry (the endpoint may well answer a bit later).
RETRYABLE: Final = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
MAX_ATTEMPTS: Final = 6
_RETRY_INFO_KEY: Final = "google.rpc.retryinfo-bin"


@dataclass(frozen=True)
class ExportFailure:
    """Why a request was given up: the gRPC status name and the endpoint's (or gRPC's) words."""

    code: str
    details: str


class OtlpClient:
    """A gRPC channel to `settings.endpoint`, which must be set; `export` is thread-safe."""

    def __init__(self, settings: Settings, user_agent: str = "async-inspect") -> None:
        if settings.endpoint is None:
            raise ExportError("no OTLP endpoint configured")
        parts = urlsplit(settings.endpoint)
        self.target = parts.netloc
        # As OpenTelemetry's exporter: an https endpoint is always TLS; http unless --secure.
        secure = parts.scheme == "https" or settings.insecure is False
        self._credentials = _credentials(settings.certificate) if secure else None
        self._compression = (
            grpc.Compression.Gzip
            if settings.compression == "gzip"
            else grpc.Compression.NoCompression
        )
        self._options = [("grpc.primary_user_agent", user_agent)]
        self._metadata = tuple(settings.headers.items())
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._channel: Any = None
        self._call: Any = None
        self._connect()

    def export(
        self,
        request: bytes,
        deadline: float,
        on_retry: Callable[[ExportFailure, float], None] | None = None,
    ) -> ExportTraceServiceResponse | ExportFailure:
        """Send `request` (bytes); retry transient errors with backoff (2^n s, +-20%, or as
        the endpoint's RetryInfo says) until `deadline` (time.monotonic()) or MAX_ATTEMPTS.
        Returns the endpoint's response, or why the request was given up."""
        for attempt in range(MAX_ATTEMPTS):
            call = self._call
            try:
                response: ExportTraceServiceResponse = call(
                    request,
                    metadata=self._metadata,
                    timeout=max(0.0, deadline - time.monotonic()),
                )
                return response
            except grpc.RpcError as error:
                code = error.code()
                failure = ExportFailure(
                    getattr(code, "name", str(code)), (error.details() or "").split("\n", 1)[0]
                )
                backoff = _retry_delay(error) or 2**attempt * random.uniform(0.8, 1.2)
                if code is grpc.StatusCode.UNAVAILABLE and attempt == 0:
                    self._connect()  # a fresh channel reconnects now, not after its own backoff
                if (
                    code not in RETRYABLE
                    or attempt + 1 == MAX_ATTEMPTS
                    or time.monotonic() + backoff > deadline
                    or self._closed.is_set()
                ):
                    return failure
                if on_retry is not None:
                    on_retry(failure, backoff)
            if self._closed.wait(backoff):
                break
        return ExportFailure("CANCELLED", "the exporter is shutting down")

    def close(self) -> None:
        """Abort retries and close the channel (an export in flight ends CANCELLED)."""
        self._closed.set()
        with self._lock:
            if self._channel is not None:
                self._channel.close()

    def _connect(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            if self._closed.is_set():
                return
            if self._credentials is None:
                self._channel = grpc.insecure_channel(
                    self.target, options=self._options, compression=self._compression
                )
            else:
                self._channel = grpc.secure_channel(
                    self.target,
                    self._credentials,
                    options=self._options,
                    compression=self._compression,
                )
            # The request is already serialized: no request serializer.
            self._call = self._channel.unary_unary(
                METHOD, response_deserializer=ExportTraceServiceResponse.FromString
            )


def _credentials(certificate: str | None) -> Any:
    root_certificates = None
    if certificate:
        try:
            with open(certificate, "rb") as handle:
                root_certificates = handle.read()
        except OSError as exc:
            raise ExportError(
                f"cannot read the CA certificate {certificate}: {exc.strerror}",
                "check OTEL_EXPORTER_OTLP_CERTIFICATE / --certificate",
            ) from None
    return grpc.ssl_channel_credentials(root_certificates=root_certificates)


def _retry_delay(error: grpc.RpcError) -> float | None:
    """The delay an endpoint asked for in a google.rpc.RetryInfo trailer, if any."""
    try:
        trailer = dict(error.trailing_metadata() or ()).get(_RETRY_INFO_KEY)
    except (AttributeError, TypeError, ValueError):
        return None
    if not isinstance(trailer, bytes):
        return None
    info = RetryInfo()
    try:
        info.ParseFromString(trailer)
    except Exception:  # a garbled trailer is no reason to stop retrying
        return None
    return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
