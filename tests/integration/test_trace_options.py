"""Which traces are exported and how they join the app's own, at a real OTLP/gRPC receiver:
ratio sampling that keeps whole traces, per-function rules (rename, sample, annotate,
exclude), the app's trace context joined, and OpenTelemetry's aiohttp instrumentation and
our spans in one tree."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tests.conftest import CLI, TARGETS
from tests.integration.exporting import CLEAN_ENV, PYTHON, run, traces
from tests.otlp_receiver import OtlpReceiver


def test_ratio_sampling_keeps_whole_traces_at_the_expected_rate(receiver: OtlpReceiver) -> None:
    # GIVEN 2000 independent request traces of 3 spans each, sampled at 10%
    n, ratio = 2000, 0.1
    result = run(
        "--endpoint",
        receiver.endpoint,
        "--sampler",
        "traceidratio",
        "--sampler-arg",
        str(ratio),
        "--exclude",
        "*:main",
        "--exclude",
        "*:health",
        "--exclude",
        "*:noisy",
        "--",
        PYTHON,
        str(TARGETS / "many_traces.py"),
        str(n),
    )
    assert result.returncode == 0, result.stderr
    time.sleep(1.5)
    kept = traces(receiver.spans())
    # THEN 10% +- 4 standard deviations of traces are kept...
    sigma = math.sqrt(n * ratio * (1 - ratio))
    assert abs(len(kept) - n * ratio) < 4 * sigma, len(kept)
    # ...and every kept trace is complete: no broken trees
    for spans in kept.values():
        assert sorted(s.name for s in spans) == ["lookup", "render", "request"]
        root = next(s for s in spans if s.name == "request")
        assert all(s.parent_span_id == root.span_id for s in spans if s is not root)


def test_rules_rename_sample_annotate_and_exclude(receiver: OtlpReceiver, tmp_path: Path) -> None:
    config = tmp_path / "async-inspect.toml"
    config.write_text(f'''
endpoint = "{receiver.endpoint}"
max_attribute_values = 3
exclude = ["*:main"]

[[rules]]
match = "__main__:health"
exclude = true

[[rules]]
match = "__main__:noisy"
sample_rate = 0.0

[[rules]]
match = "__main__:request"
name = "handle_order"
[rules.attributes]
operation = "read"
kind = "{{kind}}"
order = "{{order_id}}"
customer = "3f2a9c1e-7b4d-4c8e-9a1f-2b3c4d5e6f70"
''')
    # WHEN the app runs with the config file
    result = subprocess.run(
        [
            *CLI,
            "run",
            "-q",
            "--config",
            str(config),
            "--metrics-port",
            "0",
            "--",
            PYTHON,
            str(TARGETS / "many_traces.py"),
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=CLEAN_ENV,
    )
    assert result.returncode == 0, result.stderr
    # THEN the id-like constant was refused, with a warning naming it
    assert "rules[2].attributes.customer" in result.stderr and "refused" in result.stderr
    spans = receiver.wait_for(lambda s: sum(x.name == "handle_order" for x in s) == 30)
    names = Counter(s.name for s in spans)
    assert names["request"] == 0 and names["handle_order"] == 30  # renamed
    assert names["health"] == 0  # excluded
    assert names["noisy"] == 0  # its traces are never sampled
    orders = [s for s in spans if s.name == "handle_order"]
    assert all(s.attributes["operation"] == "read" for s in orders)
    assert "customer" not in orders[0].attributes
    assert Counter(s.attributes["kind"] for s in orders) == {"book": 10, "toy": 10, "tea": 10}
    # the order id is unbounded: three distinct values kept, the rest is the overflow value
    overflow = Counter(s.attributes["order"] for s in orders)
    assert overflow["__overflow__"] == 27 and len(overflow) == 4


def test_app_trace_context_is_joined(receiver: OtlpReceiver, tmp_path: Path) -> None:
    # GIVEN an app on OpenTelemetry's API that continues an incoming traceparent
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    app = tmp_path / "traced_app.py"
    app.write_text(f"""
import asyncio
from opentelemetry import context, propagate

async def work():
    await asyncio.sleep(0.01)

async def main():
    await work()

carrier = {{"traceparent": "00-{trace_id}-{parent_id}-01"}}
token = context.attach(propagate.extract(carrier))
asyncio.run(main())
""")
    result = run("--endpoint", receiver.endpoint, "--", sys.executable, str(app))
    assert result.returncode == 0, result.stderr
    spans = receiver.wait_for(lambda s: any(x.name == "work" for x in s))
    main = next(s for s in spans if s.name == "main")
    work = next(s for s in spans if s.name == "work")
    # THEN our spans are in the app's trace, under its span
    assert main.trace_id == work.trace_id == trace_id
    assert main.parent_span_id == parent_id and work.parent_span_id == main.span_id


def test_aiohttp_instrumentation_and_our_spans_form_one_tree(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    # GIVEN an aiohttp app with OpenTelemetry's own instrumentation exporting to the receiver
    app = tmp_path / "instrumented.py"
    app.write_text(f'''
import asyncio, sys
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter("{receiver.endpoint}",
                                                                 insecure=True)))
trace.set_tracer_provider(provider)
AioHttpServerInstrumentor().instrument()

async def load_user():
    await asyncio.sleep(0.005)

async def hello(request):
    await load_user()
    return web.Response(text="hi")

async def main():
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await runner.cleanup()

asyncio.run(main())
''')
    process = subprocess.Popen(
        [
            *CLI,
            "run",
            "-q",
            "--endpoint",
            receiver.endpoint,
            "--exclude",
            "*:main",
            "--",
            sys.executable,
            str(app),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=CLEAN_ENV,
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())
    # WHEN a request arrives with a traceparent header
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(
            f"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"traceparent: 00-{trace_id}-{parent_id}-01\r\n\r\n".encode()
        )
        assert b"200 OK" in conn.makefile("rb").read()
    process.communicate("\n", timeout=30)
    spans = receiver.wait_for(
        lambda s: (
            {"hello", "load_user"} <= {x.name for x in s}
            and any(x.scope != "async-inspect" for x in s)
        )
    )
    # THEN the instrumentation's server span and our spans form one tree in that trace
    server = next(s for s in spans if s.scope != "async-inspect")
    hello = next(s for s in spans if s.name == "hello")
    load_user = next(s for s in spans if s.name == "load_user")
    assert server.trace_id == hello.trace_id == load_user.trace_id == trace_id
    assert server.parent_span_id == parent_id
    assert hello.parent_span_id == server.span_id
    assert load_user.parent_span_id == hello.span_id
