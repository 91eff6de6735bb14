"""The OTLP export path: the bounded batcher, the retrying gRPC client and the exact loss
accounting of the exporter (every span queued is exported or counted dropped, by reason)."""

from __future__ import annotations

import asyncio
import io
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client.exposition import generate_latest

from collector.exposition import build_registry
from collector.ingest import SessionHub
from collector.metrics import MetricsStore
from collector.otlp import ExportWatch, OtlpExporter
from collector.otlp_batcher import SpanBatcher
from collector.otlp_client import ExportFailure, OtlpClient
from collector.otlp_encoder import SessionEncoder
from collector.service import Summary
from collector.session import ResourceSettings
from collector.settings import Settings
from profiler import wire
from profiler.agent.settings import AgentSettings
from profiler.cli.report import Reporter
from tests.unit.test_otlp_encoder import record, session

Response = trace_service_pb2.ExportTraceServiceResponse


# -- the batcher ------------------------------------------------------------------------


class Recorder:
    """An export function that records batches, and can be held up."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, list[bytes]]]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, batch: list[tuple[str, list[bytes]]]) -> None:
        self.release.wait(10)
        self.batches.append(batch)

    def spans(self) -> list[bytes]:
        return [span for batch in self.batches for _, spans in batch for span in spans]


def spans(prefix: str, count: int) -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(count)]


def test_full_batches_go_at_once_in_order_and_never_exceed_the_batch_size() -> None:
    recorder = Recorder()
    batcher = SpanBatcher(recorder, max_queue=100, max_batch=4, delay=30.0)
    # WHEN 10 spans arrive in chunks from two sessions
    assert batcher.put("a", spans("a", 3)) == 3
    assert batcher.put("b", spans("b", 5)) == 5
    assert batcher.put("a", spans("c", 2)) == 2
    # THEN full batches leave without waiting for the 30 s delay, the rest on flush
    deadline = time.monotonic() + 5
    while len(recorder.batches) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [sum(len(s) for _, s in b) for b in recorder.batches] == [4, 4]
    assert batcher.flush(5)
    assert [sum(len(s) for _, s in b) for b in recorder.batches] == [4, 4, 2]
    assert recorder.spans() == spans("a", 3) + spans("b", 5) + spans("c", 2)
    assert [key for key, _ in recorder.batches[0]] == ["a", "b"]  # a chunk split across two
    assert batcher.close() == 0


def test_a_partial_batch_leaves_after_the_schedule_delay() -> None:
    recorder = Recorder()
    batcher = SpanBatcher(recorder, max_queue=100, max_batch=50, delay=0.1)
    batcher.put("a", spans("a", 3))
    deadline = time.monotonic() + 5
    while not recorder.batches and time.monotonic() < deadline:
        time.sleep(0.01)
    assert recorder.spans() == spans("a", 3)
    batcher.close()


def test_the_queue_is_bounded_and_close_counts_what_was_left() -> None:
    # GIVEN an export that is stuck, so nothing leaves the queue after the first batch
    recorder = Recorder()
    recorder.release.clear()
    batcher = SpanBatcher(recorder, max_queue=10, max_batch=4, delay=30.0)
    assert batcher.put("a", spans("a", 4)) == 4  # taken by the thread, stuck in export
    deadline = time.monotonic() + 5
    while batcher.room < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    # WHEN more arrive than the queue holds
    assert batcher.put("a", spans("b", 8)) == 8
    assert batcher.room == 2
    assert batcher.put("a", spans("c", 5)) == 2
    assert batcher.put("a", spans("d", 1)) == 0
    # THEN a flush cannot finish, and close() says how many were still queued
    assert not batcher.flush(0.2)
    assert batcher.close() == 10  # the thread is still stuck in its first export
    recorder.release.set()
    batcher.join(5)
    assert batcher.put("a", spans("e", 1)) == 0


# -- the gRPC client, against a real server --------------------------------------------


class Flaky(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """Fails the first `failures` calls with `code` (asking for a 10 ms retry delay)."""

    def __init__(
        self, failures: int, code: grpc.StatusCode, rejected: int = 0, delay: float = 0.0
    ) -> None:
        self.failures = failures
        self.code = code
        self.rejected = rejected
        self.delay = delay  # seconds each answer takes
        self.requests: list[Any] = []

    def Export(self, request: Any, context: Any) -> Any:
        time.sleep(self.delay)
        self.requests.append(request)
        if len(self.requests) <= self.failures:
            retry = RetryInfo(retry_delay=Duration(nanos=10_000_000)).SerializeToString()
            context.set_trailing_metadata((("google.rpc.retryinfo-bin", retry),))
            context.abort(self.code, "not now")
        response = Response()
        if self.rejected:
            response.partial_success.rejected_spans = self.rejected
            response.partial_success.error_message = "too old"
        return response


@pytest.fixture
def server() -> Iterator[tuple[Flaky, str]]:
    servicer = Flaky(0, grpc.StatusCode.UNAVAILABLE)
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield servicer, f"http://127.0.0.1:{port}"
    grpc_server.stop(None)


def test_unavailable_is_retried_with_the_delay_the_endpoint_asks_for(
    server: tuple[Flaky, str],
) -> None:
    servicer, endpoint = server
    servicer.failures = 2
    client = OtlpClient(Settings(endpoint=endpoint, headers={"x-key": "k"}))
    retries: list[tuple[ExportFailure, float]] = []
    outcome = client.export(b"", time.monotonic() + 5, lambda f, d: retries.append((f, d)))
    assert isinstance(outcome, Response)
    assert len(servicer.requests) == 3
    assert [(f.code, f.details, d) for f, d in retries] == [("UNAVAILABLE", "not now", 0.01)] * 2
    client.close()


def test_a_permanent_error_is_not_retried(server: tuple[Flaky, str]) -> None:
    servicer, endpoint = server
    servicer.failures, servicer.code = 5, grpc.StatusCode.INVALID_ARGUMENT
    client = OtlpClient(Settings(endpoint=endpoint))
    assert client.export(b"", time.monotonic() + 5) == ExportFailure("INVALID_ARGUMENT", "not now")
    assert len(servicer.requests) == 1
    client.close()


# -- the exporter's accounting -----------------------------------------------------------


class FakeClient:
    """Answers exports with `outcome`; can be held up like a slow endpoint."""

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.requests: list[bytes] = []
        self.release = threading.Event()
        self.release.set()
        self.closed = False

    def export(self, request: bytes, deadline: float, on_retry: Any = None) -> Any:
        self.release.wait(10)
        self.requests.append(request)
        return self.outcome

    def close(self) -> None:
        self.closed = True
        self.release.set()


def exporter(
    client: Any, queue: int = 2048, batch: int = 512
) -> tuple[OtlpExporter, MetricsStore, list[str]]:
    warnings: list[str] = []
    metrics = MetricsStore()
    settings = Settings(
        endpoint="http://collector:4317", max_queue_size=queue, max_export_batch_size=batch
    )
    watch = ExportWatch("http://collector:4317", warnings.append, metrics)
    return OtlpExporter(settings, watch, client=client), metrics, warnings


def scrape(metrics: MetricsStore) -> str:
    return generate_latest(build_registry(metrics)).decode()


def test_every_span_is_exported_or_counted_by_reason() -> None:
    # GIVEN an endpoint that is stuck on its first request, and a queue of 10
    client = FakeClient(Response())
    client.release.clear()
    otlp, metrics, warnings = exporter(client, queue=10, batch=5)
    s = session()
    # WHEN 30 spans arrive
    assert otlp.on_records(s, [record(id=i) for i in range(1, 6)]) == 0  # taken: stuck
    deadline = time.monotonic() + 5
    while otlp._batcher.room < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert otlp.on_records(s, [record(id=i) for i in range(6, 31)]) == 0
    # THEN the ones beyond the queue are counted dropped, with one warning
    watch = otlp.watch
    assert watch.dropped["queue_full"] == 15 and watch.queued == 15
    assert warnings == [
        "export to http://collector:4317 failing: the export queue is full (the endpoint is "
        "slower than the spans come); 15 spans lost so far"
    ]
    # AND once the endpoint answers, everything queued is exported on shutdown
    client.release.set()
    assert otlp.flush(5)
    otlp.shutdown()
    assert watch.exported == 15 and watch.spans_lost == 15
    assert watch.queued == watch.exported + watch.spans_lost - watch.dropped["queue_full"]
    text = scrape(metrics)
    assert 'async_inspect_spans_dropped_total{reason="queue_full"} 15.0' in text
    assert 'async_inspect_spans_dropped_total{reason="export_failed"} 0.0' in text
    assert "async_inspect_spans_exported_total 15.0" in text


def test_a_failed_export_counts_its_spans_and_names_the_status() -> None:
    otlp, metrics, warnings = exporter(FakeClient(ExportFailure("UNAUTHENTICATED", "bad key")))
    s = session()
    otlp.on_records(s, [record(id=i) for i in range(1, 8)])
    otlp.flush(5)
    otlp.shutdown()
    assert otlp.watch.dropped["export_failed"] == 7 and otlp.watch.exported == 0
    assert warnings == [
        "export to http://collector:4317 failing: UNAUTHENTICATED (bad key); 7 spans lost so far"
    ]
    text = scrape(metrics)
    assert 'async_inspect_export_failures_total{exporter="otlp"} 1.0' in text
    assert 'async_inspect_spans_dropped_total{reason="export_failed"} 7.0' in text


def test_spans_rejected_by_the_endpoint_are_counted() -> None:
    response = Response()
    response.partial_success.rejected_spans = 2
    response.partial_success.error_message = "too old"
    otlp, _, warnings = exporter(FakeClient(response))
    otlp.on_records(session(), [record(id=i) for i in range(1, 6)])
    otlp.shutdown()
    assert otlp.watch.exported == 3 and otlp.watch.dropped["rejected"] == 2
    assert "the endpoint rejected 2 spans (too old)" in warnings[0]


def test_shutdown_flushes_what_is_queued_and_counts_what_never_left() -> None:
    # GIVEN spans queued (the 30 s schedule delay has not passed)
    client = FakeClient(Response())
    otlp, _, _ = exporter(client)
    s = session()
    otlp.on_records(s, [record(id=i) for i in range(1, 21)])
    # WHEN the exporter shuts down THEN they are sent, in one request
    otlp.shutdown()
    assert otlp.watch.exported == 20 and len(client.requests) == 1 and client.closed
    # AND spans arriving after shutdown are counted, not lost silently
    otlp.on_records(s, [record(id=99)])
    assert otlp.watch.dropped["shutdown"] == 1


def test_malformed_records_are_reported_not_exported() -> None:
    client = FakeClient(Response())
    otlp, _, _ = exporter(client)
    s = session()
    bad = record(events=(77, 10_000, None))
    assert otlp.on_records(s, [record(), bad, record(id=9)]) == 1
    otlp.shutdown()
    assert otlp.watch.queued == 2 and otlp.watch.exported == 2 and otlp.watch.spans_lost == 0


def test_an_encoder_per_session_lives_as_long_as_its_session() -> None:
    otlp, _, _ = exporter(FakeClient(Response()))
    s = session()
    otlp.on_records(s, [record()])
    assert isinstance(otlp._encoders.get(s), SessionEncoder)
    otlp.shutdown()
    del s
    assert len(otlp._encoders) == 0


def test_the_closing_line_says_how_many_spans_were_lost_and_why() -> None:
    stream = io.StringIO()
    summary = Summary(900, 1, 0, False, 120, (("queue_full", 100), ("export_failed", 20)))
    Reporter(quiet=True, stream=stream).summary(summary, Settings(endpoint="http://c:4317"))
    assert stream.getvalue() == (
        "async-inspect: 900 spans from 1 process(es) exported to http://c:4317; 120 of them "
        "never reached the endpoint (100 dropped because the export queue was full, 20 in "
        "exports that failed after retries)\n"
    )


# -- bursts: the ingest loop waits for a backlogged exporter ---------------------------------


def feed_burst(otlp: OtlpExporter, frames: int, per_frame: int) -> float:
    """An agent sends HELLO, CODES and `frames` SPANS frames at once over a real Unix socket
    to a SessionHub exporting with `otlp`; returns the seconds the hub took to take them."""
    s = session()
    hello = {**s.hello, "token": "t"}
    stream = [
        wire.encode_frame(wire.HELLO, hello),
        wire.encode_frame(wire.CODES, [(1, "handle", "/app/shop.py", 3, "shop")]),
    ]
    span_id = 1
    for _ in range(frames):
        stream.append(
            wire.encode_frame(wire.SPANS, [record(id=span_id + i) for i in range(per_frame)])
        )
        span_id += per_frame
    stream.append(wire.encode_frame(wire.BYE, {"reason": "done"}))

    async def run() -> float:
        hub = SessionHub([otlp], AgentSettings(), ResourceSettings(), "t", lambda notice: None)
        with tempfile.TemporaryDirectory() as folder:
            path = f"{folder}/agent.sock"
            server = await asyncio.start_unix_server(hub.handle, path=path)
            started = time.monotonic()
            _, writer = await asyncio.open_unix_connection(path)
            writer.write(b"".join(stream))
            await writer.drain()
            writer.close()
            await asyncio.sleep(0.05)
            assert await hub.wait_idle(30)
            server.close()
            return time.monotonic() - started

    return asyncio.run(run())


def test_a_burst_larger_than_the_queue_waits_for_an_answering_endpoint(
    server: tuple[Flaky, str],
) -> None:
    # GIVEN a real endpoint taking 20 ms per request, and a queue of 50 spans
    servicer, endpoint = server
    servicer.delay = 0.02
    settings = Settings(endpoint=endpoint, max_queue_size=50, max_export_batch_size=25)
    otlp = OtlpExporter(settings, ExportWatch(endpoint, print, MetricsStore()))
    # WHEN an agent ships a burst of ten times that at once
    feed_burst(otlp, frames=10, per_frame=50)
    assert otlp.flush(10)
    otlp.shutdown()
    # THEN the ingest loop waited for room instead of dropping: every span got there
    assert otlp.watch.exported == 500 and otlp.watch.spans_lost == 0
    assert sum(len(r.resource_spans[0].scope_spans[0].spans) for r in servicer.requests) == 500


def test_a_failing_endpoint_is_not_waited_for(server: tuple[Flaky, str]) -> None:
    # GIVEN an endpoint that refuses everything (not worth retrying), and a queue of 50
    servicer, endpoint = server
    servicer.failures, servicer.code, servicer.delay = 10**6, grpc.StatusCode.INVALID_ARGUMENT, 0.02
    settings = Settings(endpoint=endpoint, max_queue_size=50, max_export_batch_size=25)
    otlp = OtlpExporter(settings, ExportWatch(endpoint, lambda message: None, MetricsStore()))
    # WHEN a burst of 500 spans comes THEN the hub takes it without waiting on the endpoint
    took = feed_burst(otlp, frames=10, per_frame=50)
    otlp.shutdown()
    assert took < 2.0
    # AND every span is counted: refused by the endpoint, or dropped from the full queue
    watch = otlp.watch
    assert watch.exported == 0 and watch.spans_lost == 500
    assert watch.dropped["queue_full"] > 0 and watch.dropped["export_failed"] > 0
