"""A lean OTLP/gRPC trace receiver that counts spans per `service.name`, in its own process.

Prints `READY port=<port>` (flushed) once it listens on 127.0.0.1. On stdin it answers
`stats` with one JSON line {service: {"spans": n, "requests": n, "bytes": n}} and exits on
`quit` or end of input, so it never outlives the harness that started it.

Usage: otlp_sink.py [--port N]   (0, the default: a free port)
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections import defaultdict
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Counts:
    """Spans, requests and request bytes per service.name, shared by the server threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_service: dict[str, dict[str, int]] = defaultdict(
            lambda: {"spans": 0, "requests": 0, "bytes": 0}
        )

    def add(self, request: Any) -> None:
        size = request.ByteSize()
        per_service: dict[str, int] = defaultdict(int)
        for resource_spans in request.resource_spans:
            service = _service_name(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                per_service[service] += len(scope_spans.spans)
        with self.lock:
            for service, spans in per_service.items():
                entry = self.by_service[service]
                entry["spans"] += spans
                entry["requests"] += 1
                entry["bytes"] += size // max(len(per_service), 1)

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {service: dict(entry) for service, entry in self.by_service.items()}


def _service_name(attributes: Any) -> str:
    for kv in attributes:
        if kv.key == "service.name":
            return str(kv.value.string_value)
    return "<unknown>"


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc,unused-ignore]
    def __init__(self, counts: Counts) -> None:
        self.counts = counts

    def Export(self, request: Any, context: Any) -> Any:
        self.counts.add(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def serve_commands(counts: Counts) -> None:
    """Answer `stats` lines on stdin until `quit` or EOF."""
    for line in sys.stdin:
        command = line.strip()
        if command == "stats":
            print(json.dumps(counts.snapshot()), flush=True)
        elif command == "quit":
            return


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    port = parser.parse_args().port
    counts = Counts()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call,unused-ignore]
        TraceService(counts), server
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"READY port={bound}", flush=True)
    try:
        serve_commands(counts)
    finally:
        server.stop(grace=1.0)


if __name__ == "__main__":
    main()
