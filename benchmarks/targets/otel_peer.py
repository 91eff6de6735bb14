"""The peer: OpenTelemetry's own aiohttp-server instrumentation, for comparison with ours.

`instrument_if_asked()` does nothing unless BENCH_OTEL_PEER_ENDPOINT is set; then it sets up
the SDK as an application would (TracerProvider, BatchSpanProcessor, OTLP/gRPC exporter to
that endpoint, service.name from OTEL_SERVICE_NAME, every other setting the SDK's default)
and calls `AioHttpServerInstrumentor().instrument()`. Call it before `web.Application()`.
The SDK registers its own exit hook, which flushes the batch processor at exit.
"""

from __future__ import annotations

import os

ENDPOINT = "BENCH_OTEL_PEER_ENDPOINT"


def instrument_if_asked() -> bool:
    """Instrument aiohttp's server and export its spans, if the environment asks; True then."""
    endpoint = os.environ.get(ENDPOINT)
    if not endpoint:
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint, insecure=True)))
    trace.set_tracer_provider(provider)
    AioHttpServerInstrumentor().instrument()
    return True
