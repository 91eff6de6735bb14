"""Collector throughput: agent span records -> the real ingest path -> the OTLP exporter ->
a real OTLP/gRPC receiver, with the collector pinned to one CPU.

    .venv/bin/python -m benchmarks.collector_throughput               # 3 rounds, ~3 minutes
    .venv/bin/python -m benchmarks.collector_throughput --spans 50000 --rounds 1 --modes records

Per round and mode a fresh collector process (this module with `--serve`, pinned with
taskset to --collector-cpu) listens on a Unix socket, with a SessionHub and one exporter:

    records   collector.otlp.OtlpExporter: OTLP protobuf straight from the records
    sdk       what async-inspect did before: ReadableSpans + the SDK's BatchSpanProcessor
              + OTLPSpanExporter (kept here only for comparison)

each without and with gzip. This harness (on --feeder-cpu, with the receiver,
targets/otlp_sink.py) plays an agent: HELLO, CODES, then pre-encoded SPANS frames of 512
records as fast as the collector reads them, then BYE. The records are synthetic but shaped
like a service's: traces of 3-6 spans (a request task, awaited coroutines, a child task),
poll / blocked / wake / completed events, task names, 2% failures with a stack trace.
The export queue holds a whole run (--max-queue-size), so nothing is dropped and the figure
is the cost per span: spans the receiver got / CPU seconds of the collector process (user +
system, all its threads, gRPC's included) = spans/s per core. `wall` is spans per second of
wall-clock time from the agent's connection to the last export.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from profiler import wire

from .procs import BenchError, Children, clean_environment, pinned
from .receiver import Receiver

MODES = ("sdk", "records")
COMPRESSIONS = ("none", "gzip")
TOKEN = "collector-throughput"
FRAME_SPANS = 512
CODES = [
    (1, "handle_request", "/srv/shop/handlers.py", 40, "shop.handlers"),
    (2, "auth_user", "/srv/shop/auth.py", 12, "shop.auth"),
    (3, "fetch_data", "/srv/shop/data.py", 30, "shop.data"),
    (4, "db_query", "/srv/shop/db.py", 88, "shop.db"),
    (5, "render_response", "/srv/shop/views.py", 21, "shop.views"),
    (6, "Cache.refresh", "/srv/shop/cache.py", 55, "shop.cache"),
]
AWAITING = ("Future", "sleep", "task fetch-data", "Event.wait")


def make_records(count: int, seed: int = 7) -> list[tuple[Any, ...]]:
    """`count` valid wire span tuples, children before their parents as the agent sends them."""
    rng = random.Random(seed)
    records: list[tuple[Any, ...]] = []
    next_id, next_task, now = 1, 1, 1_000_000_000
    while len(records) < count:
        root, task = next_id, next_task
        next_id, next_task = next_id + 1, next_task + 1
        start, spans = now, []
        for code in rng.sample((2, 3, 5, 6), rng.randint(2, 4)):
            child, child_task, name = next_id, task, None
            next_id += 1
            if code == 3 and rng.random() < 0.5:  # fetch_data as a task of its own
                child_task, name, next_task = next_task, f"fetch-{next_task}", next_task + 1
            spans.append(_span(rng, child, root, root, child_task, code, start, name, task))
            if code == 3:
                spans.append(_span(rng, next_id, child, root, child_task, 4, start + 1000))
                next_id += 1
            start += rng.randint(200_000, 5_000_000)
        spans.append(_span(rng, root, 0, root, task, 1, now, f"Task-{task}", 0, end=start))
        records.extend(spans)
        now = start + rng.randint(10_000, 100_000)
    return records[:count]


def _span(
    rng: random.Random, span_id: int, parent: int, trace: int, task: int, code: int,
    start: int, task_name: str | None = None, parent_task: int = 0, end: int = 0,
) -> tuple[Any, ...]:  # fmt: skip
    end = end or start + rng.randint(100_000, 4_000_000)
    events: list[Any] = [wire.EVENT_POLL, start, None]
    t = start
    for _ in range(rng.randint(0, 2)):
        t += (end - t) // 3
        events += [wire.EVENT_BLOCKED, t, rng.choice(AWAITING), wire.EVENT_WAKE, t + 50_000, None]
        events += [wire.EVENT_POLL, t + 60_000, None]
    failed = rng.random() < 0.02
    error = None
    if failed:
        trace_text = f'  File "/srv/shop/db.py", line 90, in db_query\n{"    x = 1\n" * 8}'
        error = ("TimeoutError", "query timed out", trace_text)
    events += [wire.EVENT_FAILED if failed else wire.EVENT_COMPLETED, end, None]
    state = wire.STATE_FAILED if failed else wire.STATE_COMPLETED
    flags = wire.FLAG_TASK_ROOT if task_name else 0
    return (span_id, parent, trace, task, code, 4242, start, end, state, len(events) // 9 + 1,
            (end - start) // 7, tuple(events), 0, error, task_name, parent_task, None, None,
            flags, None)  # fmt: skip


def agent_stream(records: list[tuple[Any, ...]], service: str) -> bytes:
    """What an agent would send for these records: HELLO, CODES, SPANS frames, BYE."""
    hello = {"pid": 4242, "ppid": 1, "token": TOKEN, "program": service, "python": "3.12.1",
             "implementation": "cpython", "hostname": "bench", "argv": ["python", "shop.py"],
             "env": {"OTEL_SERVICE_NAME": service}, "clock": (time.time_ns(), 0),
             "agent_version": "0.1.0"}  # fmt: skip
    frames = [wire.encode_frame(wire.HELLO, hello), wire.encode_frame(wire.CODES, CODES)]
    for index in range(0, len(records), FRAME_SPANS):
        frames.append(wire.encode_frame(wire.SPANS, records[index : index + FRAME_SPANS]))
    frames.append(wire.encode_frame(wire.BYE, {"reason": "done"}))
    return b"".join(frames)


# -- the collector process -------------------------------------------------------------


async def serve(mode: str, compression: str, path: str, endpoint: str, queue: int) -> None:
    """Listen on `path`; after one agent connection ends and the outputs are flushed, print
    `RESULT {json}`."""
    from collector.ingest import SessionHub
    from collector.metrics import MetricsStore
    from collector.otlp import ExportWatch, OtlpExporter
    from collector.session import ResourceSettings
    from collector.settings import Settings
    from collector.sinks import ProcessorSink, SpanSink
    from profiler.agent.settings import AgentSettings

    settings = Settings(endpoint=endpoint, compression=compression, max_queue_size=queue)
    watch = None
    if mode == "records":
        watch = ExportWatch(endpoint, lambda m: print(m, file=sys.stderr), MetricsStore())
        sinks: list[SpanSink] = [OtlpExporter(settings, watch)]
    else:
        sinks = [ProcessorSink(_sdk_processor(settings))]
    hub = SessionHub(sinks, AgentSettings(), ResourceSettings(), TOKEN, lambda notice: None)
    connected = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        await hub.handle(reader, writer)

    server = await asyncio.start_unix_server(handle, path=path)
    print("READY", flush=True)
    await connected.wait()
    cpu, wall = time.process_time(), time.perf_counter()
    await hub.wait_idle(3600)
    for sink in sinks:
        await asyncio.to_thread(sink.flush, 3600)
        await asyncio.to_thread(sink.shutdown)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    server.close()
    result = {"handed": hub.spans_exported, "malformed": hub.malformed_spans, "cpu": cpu,
              "wall": wall, "lost": watch.spans_lost if watch is not None else None}  # fmt: skip
    print("RESULT " + json.dumps(result), flush=True)


def _sdk_processor(settings: Any) -> Any:
    import grpc
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    gzip = settings.compression == "gzip"
    exporter = OTLPSpanExporter(
        endpoint=settings.endpoint,
        insecure=True,
        compression=grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression,
    )
    return BatchSpanProcessor(
        exporter,
        max_queue_size=settings.max_queue_size,
        schedule_delay_millis=settings.export_interval * 1000,
        max_export_batch_size=settings.max_export_batch_size,
    )


# -- the harness ----------------------------------------------------------------------


def measure(
    children: Children, receiver: Receiver, args: argparse.Namespace, mode: str,
    compression: str, records: list[tuple[Any, ...]], run: int,
) -> dict[str, Any]:  # fmt: skip
    """One collector process of `mode`, fed `records`; its RESULT plus what was received."""
    service = f"bench-{mode}-{compression}-{run}"
    stream = agent_stream(records, service)
    path = str(Path(children.directory) / f"collector-{run}.sock")
    argv = [sys.executable, "-m", "benchmarks.collector_throughput", "--serve", mode,
            compression, path, receiver.endpoint, str(args.max_queue_size)]  # fmt: skip
    child = children.start(f"collector-{mode}-{compression}", pinned(args.collector_cpu, argv))
    try:
        child.expect("READY", 60)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            sock.sendall(stream)  # blocks while the collector is busy: it sets the pace
            sock.shutdown(socket.SHUT_WR)
            sock.recv(1 << 16)  # the collector closes once it has read everything
        result: dict[str, Any] = json.loads(child.expect("RESULT", 3600).split(" ", 1)[1])
    finally:
        children.stop(child)
    deadline = time.monotonic() + 10
    while (received := receiver.received(service).spans) < result["handed"]:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return {**result, "received": received}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", nargs=5, metavar="ARG", help=argparse.SUPPRESS)
    parser.add_argument("--spans", type=int, default=100_000, help="spans per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES), help="sdk,records")
    parser.add_argument("--compressions", default=",".join(COMPRESSIONS), help="none,gzip")
    parser.add_argument("--collector-cpu", type=int, default=0)
    parser.add_argument("--feeder-cpu", type=int, default=1, help="this harness, the receiver")
    parser.add_argument("--max-queue-size", type=int, default=0, help="0: the run's spans")
    args = parser.parse_args()
    if args.serve:
        mode, compression, path, endpoint, queue = args.serve
        asyncio.run(serve(mode, compression, path, endpoint, int(queue)))
        return
    args.max_queue_size = args.max_queue_size or args.spans
    if args.feeder_cpu >= 0:
        import os

        os.sched_setaffinity(0, {args.feeder_cpu})
    records = make_records(args.spans)
    configs = [(m, c) for m in args.modes.split(",") for c in args.compressions.split(",")]
    results: dict[tuple[str, str], list[dict[str, Any]]] = {config: [] for config in configs}
    with tempfile.TemporaryDirectory(prefix="collector-bench-") as tmp:
        children = Children(Path(tmp), clean_environment())
        with children.scope():
            receiver = Receiver.start(children, args.feeder_cpu)
            for round_index in range(args.rounds):
                for mode, compression in configs:
                    run = round_index * len(configs) + configs.index((mode, compression))
                    try:
                        result = measure(children, receiver, args, mode, compression, records, run)
                    except BenchError as exc:
                        print(f"!! FAILED {mode}/{compression}: {exc}", file=sys.stderr)
                        continue
                    results[(mode, compression)].append(result)
                    print(f"round {round_index + 1} {mode:7} {compression:4} "
                          f"{result['received'] / result['cpu']:>9,.0f} spans/CPU-s  "
                          f"{result['received'] / result['wall']:>9,.0f} spans/s wall  "
                          f"received {result['received']:,}/{result['handed']:,}",
                          file=sys.stderr, flush=True)  # fmt: skip
    print(table(results, args))


def table(results: dict[tuple[str, str], list[dict[str, Any]]], args: argparse.Namespace) -> str:
    """The medians per mode, [min-max] over rounds."""
    lines = [f"collector throughput: {args.spans:,} spans per run, collector on CPU "
             f"{args.collector_cpu}, {args.rounds} round(s)",
             f"{'mode':8}{'gzip':6}{'spans/s per core (CPU-s)':>34}{'spans/s wall':>14}"
             f"{'received':>12}{'CPU s':>8}"]  # fmt: skip
    for (mode, compression), runs in results.items():
        if not runs:
            lines.append(f"{mode:8}{compression:6}{'failed':>34}")
            continue
        per_cpu = [r["received"] / r["cpu"] for r in runs]
        wall = statistics.median(r["received"] / r["wall"] for r in runs)
        received = min(r["received"] for r in runs)
        spread = f"{statistics.median(per_cpu):,.0f} [{min(per_cpu):,.0f}-{max(per_cpu):,.0f}]"
        cpu = statistics.median(r["cpu"] for r in runs)
        lines.append(f"{mode:8}{compression:6}{spread:>34}{wall:>14,.0f}{received:>12,}"
                     f"{cpu:>8.2f}")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
