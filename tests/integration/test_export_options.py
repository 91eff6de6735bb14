"""The exporter's options, at a real OTLP/gRPC receiver: headers, gzip, TLS, resource, a
collector hop, a dead endpoint, bad settings, precedence of flags, environment and config
file, and a custom span processor. What decides which traces are exported and how they
join the app's own is in test_trace_options.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest
import trustme

from tests.conftest import TARGETS
from tests.integration.exporting import CLEAN_ENV, PYTHON, run
from tests.otlp_receiver import OtlpReceiver
from tests.tcp_proxy import CountingProxy


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
