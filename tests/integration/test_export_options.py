"""Every exporter option of the spec, at a real OTLP/gRPC receiver: headers, gzip, TLS,
resource, sampling that keeps whole traces, per-function rules, propagation, a collector hop,
a dead endpoint, and bad settings."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from pathlib import Path

import pytest
import trustme

from tests.conftest import CLI, INTERPRETERS, TARGETS
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.tcp_proxy import CountingProxy

PYTHON = INTERPRETERS[min(INTERPRETERS)]
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ASYNC_INSPECT"))}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "run", "-q", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env or CLEAN_ENV,
    )


def traces(spans: list[ReceivedSpan]) -> dict[str, list[ReceivedSpan]]:
    by_trace: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    return by_trace


def test_headers_resource_and_service_reach_the_receiver(receiver: OtlpReceiver) -> None:
    env = {
        **CLEAN_ENV,
        "OTEL_RESOURCE_ATTRIBUTES": "team=core,region=eu",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-team=core",
    }
    result = run(
        "--endpoint",
        receiver.endpoint,
        "--header",
        "x-api-key=s3cret-value",
        "--service-name",
        "shop",
        "--service-version",
        "1.2.3",
        "--resource",
        "deployment.environment=test",
        "--resource",
        "region=us",
        "--",
        PYTHON,
        str(TARGETS / "spec_app.py"),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    spans = receiver.wait_for(lambda s: any(x.name == "handle_request" for x in s))
    metadata = receiver.requests[0].metadata
    assert metadata["x-api-key"] == "s3cret-value"
    # The flag replaced the environment's headers (flag > environment), as for every setting.
    assert "x-team" not in metadata
    resource = spans[0].resource
    assert resource["service.name"] == "shop" and resource["service.version"] == "1.2.3"
    assert resource["deployment.environment"] == "test" and resource["region"] == "us"
    assert "s3cret-value" not in result.stderr + result.stdout


def test_environment_headers_are_sent(receiver: OtlpReceiver) -> None:
    env = {**CLEAN_ENV, "OTEL_EXPORTER_OTLP_HEADERS": "x-honeycomb-team=abc,x-dataset=async"}
    result = run(
        "--endpoint", receiver.endpoint, "--", PYTHON, str(TARGETS / "spec_app.py"), env=env
    )
    assert result.returncode == 0, result.stderr
    receiver.wait_for(lambda s: len(s) > 0)
    metadata = receiver.requests[0].metadata
    assert metadata["x-honeycomb-team"] == "abc" and metadata["x-dataset"] == "async"


def test_gzip_compression_shrinks_what_goes_on_the_wire(receiver: OtlpReceiver) -> None:
    sent = {}
    for compression in ("none", "gzip"):
        proxy = CountingProxy(receiver.port)
        try:
            result = run(
                "--endpoint",
                proxy.endpoint,
                "--compression",
                compression,
                "--",
                PYTHON,
                str(TARGETS / "many_traces.py"),
                "300",
            )
            assert result.returncode == 0, result.stderr
        finally:
            proxy.stop()
        sent[compression] = proxy.client_bytes
    spans = receiver.spans()
    assert len(spans) == 2 * len(spans) // 2 and len(spans) > 2000  # both runs arrived whole
    assert sent["gzip"] < 0.5 * sent["none"], sent


def test_tls_with_a_ca_file(tmp_path: Path) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("localhost")
    chain = b"".join(blob.bytes() for blob in certificate.cert_chain_pems)
    secure = OtlpReceiver(tls=(chain, certificate.private_key_pem.bytes())).start()
    try:
        ca_file = tmp_path / "ca.pem"
        authority.cert_pem.write_to_path(str(ca_file))
        result = run(
            "--endpoint",
            secure.endpoint,
            "--certificate",
            str(ca_file),
            "--",
            PYTHON,
            str(TARGETS / "spec_app.py"),
        )
        assert result.returncode == 0, result.stderr
        secure.wait_for(lambda s: any(x.name == "handle_request" for x in s))
        # Without the CA the certificate is not trusted: a warning, nothing exported.
        result = run(
            "--endpoint",
            secure.endpoint,
            "--export-timeout",
            "2000",
            "--",
            PYTHON,
            str(TARGETS / "spec_app.py"),
        )
        assert result.returncode == 0
        assert "never reached the endpoint" in result.stderr
    finally:
        secure.stop()


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


def test_through_a_real_collector_hop(receiver: OtlpReceiver) -> None:
    # GIVEN rotel (an OTLP collector) between our exporter and the receiver
    import rotel

    agent = Path(rotel.__file__).with_name("rotel-agent")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    hop = subprocess.Popen(
        [
            str(agent),
            "start",
            "--otlp-grpc-endpoint",
            f"127.0.0.1:{port}",
            "--otlp-http-endpoint",
            "127.0.0.1:0",
            "--exporter",
            "otlp",
            "--otlp-exporter-endpoint",
            f"http://127.0.0.1:{receiver.port}",
            "--otlp-exporter-protocol",
            "grpc",
        ],
        env={**os.environ, "LD_LIBRARY_PATH": libdir},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert hop.poll() is None, hop.stderr.read() if hop.stderr else ""
            assert time.monotonic() < deadline, "rotel did not start listening"
            time.sleep(0.1)
        result = run(
            "--endpoint",
            f"http://127.0.0.1:{port}",
            "--compression",
            "gzip",
            "--header",
            "x-api-key=k",
            "--",
            PYTHON,
            str(TARGETS / "spec_app.py"),
        )
        assert result.returncode == 0, result.stderr
        # THEN the whole tree arrives after the hop
        spans = receiver.wait_for(
            lambda s: sum(x.name == "handle_request" for x in s) == 2, timeout=20
        )
        assert {"auth_user", "fetch_data", "db_query", "render_response"} <= {s.name for s in spans}
    finally:
        hop.terminate()
        hop.wait(10)


def test_a_dead_endpoint_warns_and_the_app_is_unharmed() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    result = run(
        "--endpoint",
        f"http://127.0.0.1:{dead}",
        "--export-timeout",
        "1000",
        "--header",
        "authorization=Bearer hunter2",
        "--",
        PYTHON,
        str(TARGETS / "spec_app.py"),
        "7",
    )
    assert result.returncode == 7 and result.stdout == "app stdout line\n"
    assert f"export to http://127.0.0.1:{dead} failing: UNAVAILABLE" in result.stderr
    assert "never reached the endpoint" in result.stderr
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--sampler", "sometimes"], {}, "--sampler"),
        ([], {"OTEL_TRACES_SAMPLER": "sometimes"}, "$OTEL_TRACES_SAMPLER='sometimes'"),
        (["--sampler-arg", "2"], {}, "must be a number from 0 to 1"),
        ([], {"OTEL_TRACES_SAMPLER_ARG": "2"}, "$OTEL_TRACES_SAMPLER_ARG='2'"),
        (["--header", "novalue"], {}, "--header"),
        ([], {"OTEL_EXPORTER_OTLP_HEADERS": "x-key"}, "$OTEL_EXPORTER_OTLP_HEADERS=<redacted>"),
        (["--endpoint", "ftp://x"], {}, "--endpoint"),
        (["--config", "/no/such/file.toml"], {}, "cannot read config file /no/such/file.toml"),
    ],
)
def test_bad_settings_are_one_line_naming_the_setting(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    result = run(*args, "--", "true", env={**CLEAN_ENV, **env})
    assert result.returncode in (2, 64), result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("endpont = 'http://x:1'", "unknown setting(s) endpont"),
        ("sampler_arg = 'many'", "sampler_arg"),
        ("[[rules]]\nmatch = 'a:*'\nsample_rate = 5", "rules[0].sample_rate=5"),
        ("[[rules]]\nmatch = 'a:*'\nrename = 'x'", "rules[0] has unknown key(s) rename"),
        ("endpoint = ", "is not valid TOML"),
    ],
)
def test_bad_config_files(tmp_path: Path, content: str, expected: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    result = run("--config", str(config), "--", "true")
    assert result.returncode == 64, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and str(config) in lines[0], result.stderr


def test_flags_beat_environment_beat_config_file(receiver: OtlpReceiver, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'service_name = "from-file"\nservice_version = "file"\nendpoint = "{receiver.endpoint}"\n'
    )
    env = {**CLEAN_ENV, "OTEL_SERVICE_NAME": "from-env"}
    result = run(
        "--config",
        str(config),
        "--service-version",
        "flag",
        "--",
        PYTHON,
        str(TARGETS / "spec_app.py"),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    resource = receiver.wait_for(lambda s: len(s) > 0)[0].resource
    assert resource["service.name"] == "from-env" and resource["service.version"] == "flag"


def test_a_custom_span_processor_is_loaded(tmp_path: Path) -> None:
    (tmp_path / "my_processor.py").write_text("""
from opentelemetry.sdk.trace import SpanProcessor
import os

class Names(SpanProcessor):
    def on_end(self, span):
        with open(os.environ["NAMES_FILE"], "a") as f:
            f.write(span.name + "\\n")
""")
    names = tmp_path / "names.txt"
    env = {**CLEAN_ENV, "NAMES_FILE": str(names), "PYTHONPATH": str(tmp_path)}
    result = run(
        "--no-tree",
        "--span-processor",
        "my_processor:Names",
        "--",
        PYTHON,
        str(TARGETS / "spec_app.py"),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "handle_request" in names.read_text().split()
    result = run("--span-processor", "no_such_module:X", "--", "true")
    assert (
        result.returncode == 64 and "cannot load span processor no_such_module:X" in result.stderr
    )
