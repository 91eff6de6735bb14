"""A real OTLP/gRPC trace receiver for tests, built on opentelemetry-proto's service stubs.

It records every export request with its metadata (headers, compression) and offers the
spans flattened, with their resource attributes, for assertions.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def _attrs(items: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in items}


@dataclass
class ReceivedSpan:
    """One span as the receiver got it."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start: int
    end: int
    attributes: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]]
    links: list[tuple[str, str]]
    status_code: int
    status_message: str
    resource: dict[str, Any]
    scope: str

    @property
    def duration_ms(self) -> float:
        return (self.end - self.start) / 1e6

    def event_names(self) -> list[str]:
        return [name for name, _, _ in self.events]


@dataclass
class Request:
    """One Export call: its metadata and spans."""

    metadata: dict[str, str]
    spans: list[ReceivedSpan] = field(default_factory=list)


class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:
        metadata = {k: v for k, v in context.invocation_metadata()}
        received = Request(metadata)
        for resource_spans in request.resource_spans:
            resource = _attrs(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.spans.append(
                        ReceivedSpan(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=span.kind,
                            start=span.start_time_unix_nano,
                            end=span.end_time_unix_nano,
                            attributes=_attrs(span.attributes),
                            events=[
                                (e.name, e.time_unix_nano, _attrs(e.attributes))
                                for e in span.events
                            ],
                            links=[(k.trace_id.hex(), k.span_id.hex()) for k in span.links],
                            status_code=span.status.code,
                            status_message=span.status.message,
                            resource=resource,
                            scope=scope_spans.scope.name,
                        )
                    )
        with self.receiver.lock:
            self.receiver.requests.append(received)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """Listens on 127.0.0.1:<free port>; `endpoint` is what to give the exporter."""

    def __init__(self, tls: tuple[bytes, bytes] | None = None) -> None:
        """`tls`: (PEM certificate chain, PEM private key) to serve https instead."""
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Servicer(self), self._server)
        if tls is None:
            self.port = self._server.add_insecure_port("127.0.0.1:0")
            self.endpoint = f"http://127.0.0.1:{self.port}"
        else:
            credentials = grpc.ssl_server_credentials([(tls[1], tls[0])])
            self.port = self._server.add_secure_port("localhost:0", credentials)
            self.endpoint = f"https://localhost:{self.port}"

    def start(self) -> OtlpReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    def spans(self) -> list[ReceivedSpan]:
        with self.lock:
            return [span for request in self.requests for span in request.spans]

    def clear(self) -> None:
        """Forget the requests received so far."""
        with self.lock:
            self.requests.clear()

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> list[ReceivedSpan]:
        """Wait until predicate(spans) is true; return the spans (asserting on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver timed out with {len(spans)} spans")
            time.sleep(0.05)
