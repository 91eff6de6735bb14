"""`async-inspect run`: real target processes (3.12/3.13/3.14), spans at a real OTLP receiver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CLI, INTERPRETERS, TARGETS, interpreter_params
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

SPAN_KIND_INTERNAL = 1
STATUS_ERROR = 2


def run_cli(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout)


def by_name(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return sorted(
        (s for s in spans if s.parent_span_id == parent.span_id and s.trace_id == parent.trace_id),
        key=lambda s: s.start,
    )


@pytest.fixture(params=interpreter_params())
def python(request: pytest.FixtureRequest) -> str:
    return INTERPRETERS[request.param]


def test_run_exports_the_spec_tree_over_otlp(python: str, receiver: OtlpReceiver) -> None:
    # GIVEN a plain asyncio app (no async-inspect import) and a real OTLP receiver
    # WHEN it runs under `async-inspect run --endpoint`
    result = run_cli(
        ["run", "--endpoint", receiver.endpoint, "--", python, str(TARGETS / "spec_app.py"), "3"]
    )
    # THEN the app's exit code and stdout pass through unchanged, stderr keeps its line
    assert result.returncode == 3, result.stderr
    assert result.stdout == "app stdout line\n"
    assert "app stderr line" in result.stderr
    spans = receiver.wait_for(lambda s: len(by_name(s, "handle_request")) == 2)

    # AND the spec's tree comes out the same whether fetch_data is awaited or a task
    for request in by_name(spans, "handle_request"):
        kids = children(spans, request)
        assert [k.name for k in kids] == ["auth_user", "fetch_data", "render_response"]
        fetch = kids[1]
        assert [k.name for k in children(spans, fetch)] == ["db_query"]
        for span in (request, *kids):
            assert span.kind == SPAN_KIND_INTERNAL
            assert span.attributes["task.state"] == "completed"
    as_task = next(s for s in spans if s.attributes.get("asyncio.task.name") == "fetch-task")
    assert as_task.name == "fetch_data"
    request_2 = next(s for s in spans if s.attributes.get("asyncio.task.name") == "request-2")
    assert as_task.attributes["task.parent_id"] == request_2.attributes["task.id"]
    assert as_task.attributes["task.id"] != request_2.attributes["task.id"]

    # AND the attributes and events are those of the spec
    auth = by_name(spans, "auth_user")[0]
    attrs = auth.attributes
    assert attrs["task.name"] == "auth_user"
    assert attrs["task.location"].endswith("spec_app.py:9")
    assert attrs["task.poll_count"] == 2
    assert isinstance(attrs["thread.id"], int) and attrs["thread.id"] > 0
    assert 45 <= auth.duration_ms <= 500
    assert abs(attrs["task.duration_ms"] - auth.duration_ms) < 0.01
    assert attrs["task.busy_ms"] < attrs["task.duration_ms"]
    assert auth.event_names()[0] == "poll"
    assert "blocked" in auth.event_names() and auth.event_names()[-1] == "completed"
    blocked = next(e for e in auth.events if e[0] == "blocked")
    assert blocked[2]["awaiting"] == "Future"
    offsets = [t for _, t, _ in auth.events]
    assert offsets == sorted(offsets) and auth.start <= offsets[0] and offsets[-1] <= auth.end

    # AND a failing task is failed with the OpenTelemetry exception attributes
    failing = by_name(spans, "failing")[0]
    assert failing.attributes["task.state"] == "failed"
    assert failing.status_code == STATUS_ERROR and "boom" in failing.status_message
    failed = next(e for e in failing.events if e[0] == "failed")
    assert failed[2]["exception.type"] == "ValueError"
    assert failed[2]["exception.message"] == "boom"
    assert "in failing" in failed[2]["exception.stacktrace"]

    # AND a cancelled task is cancelled, and a task still blocked at exit is flushed
    assert by_name(spans, "sleeper")[0].attributes["task.state"] == "cancelled"
    stuck = by_name(spans, "stuck_forever")[0]
    assert stuck.attributes["task.state"] == "blocked"

    # AND the resource describes the process
    resource = auth.resource
    assert resource["service.name"] == "spec_app"
    assert resource["process.runtime.name"] == "CPython"
    version = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert resource["process.runtime.version"] == version
    assert "spec_app.py" in resource["process.command_line"]
    assert auth.scope == "async-inspect"


def test_tasks_keep_their_names_and_spans_carry_them(
    python: str, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    # GIVEN an app naming its tasks every way asyncio allows, and printing what it sees
    # WHEN it runs under `async-inspect run`, compiled callbacks and pure Python alike
    output = tmp_path / "spans.jsonl"
    for accelerated in ("1", "0"):
        result = subprocess.run(
            [*CLI, "run", "--endpoint", receiver.endpoint, "--output", str(output),
             "--no-tree", "--", python, str(TARGETS / "task_names.py")],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "ASYNC_INSPECT_ACCELERATOR": accelerated},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        # THEN the app sees the names it would see without us (no "None")
        seen = json.loads(result.stdout)
        assert seen[3:6] == ["given", "renamed", seen[5]]
        assert seen[5].startswith("own-Task-")
        assert all(name.startswith("Task-") for name in seen[:3] + seen[6:8]), seen
        assert seen[8] == "renamed-unseen"
        # AND each task's span carries that name
        names = set(seen)
        spans = receiver.wait_for(
            lambda s, names=names: names <= {x.attributes.get("asyncio.task.name") for x in s}
        )
        assert "None" not in {s.attributes.get("asyncio.task.name") for s in spans}
        receiver.clear()
        # (and so does each JSON line)
        lines = [json.loads(line) for line in output.read_text().splitlines()]
        assert set(seen) <= {line["attributes"].get("asyncio.task.name") for line in lines}


def test_run_without_endpoint_draws_trees_and_writes_json_lines(tmp_path: Path) -> None:
    # GIVEN no endpoint anywhere
    output = tmp_path / "spans.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    python = INTERPRETERS[min(INTERPRETERS)]
    # WHEN the app runs with --output
    result = subprocess.run(
        [*CLI, "run", "--output", str(output), "--", python, str(TARGETS / "spec_app.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    # THEN trees like the spec's example are drawn on stderr
    assert "Span: handle_request [" in result.stderr
    assert "├─ Span: auth_user [" in result.stderr
    assert "Event: blocked (" in result.stderr
    # AND every span is a JSON line
    records = [json.loads(line) for line in output.read_text().splitlines()]
    names = {r["name"] for r in records}
    assert {"main", "handle_request", "auth_user", "fetch_data", "db_query"} <= names
    failing = next(r for r in records if r["name"] == "failing")
    assert failing["status"]["code"] == "ERROR"
    assert failing["attributes"]["task.state"] == "failed"


def test_ctrl_c_flushes_spans_of_running_tasks(receiver: OtlpReceiver) -> None:
    # GIVEN an app serving forever under `run`, in its own process group like a terminal job
    python = INTERPRETERS[min(INTERPRETERS)]
    process = subprocess.Popen(
        [
            *CLI,
            "run",
            "--endpoint",
            receiver.endpoint,
            "--",
            python,
            str(TARGETS / "forever_app.py"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    time.sleep(0.5)
    # WHEN Ctrl-C reaches the whole job
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    # THEN the app's interrupt exit status passes through
    assert process.returncode == 130, stderr
    # AND the spans of what was running were exported, ended by the interrupt
    spans = receiver.wait_for(lambda s: any(x.name == "serve" for x in s))
    serve = by_name(spans, "serve")[0]
    assert serve.attributes["task.state"] in ("cancelled", "failed")
    assert len(by_name(spans, "tick")) > 5


def test_run_reports_a_command_that_does_not_exist() -> None:
    result = run_cli(["run", "--", "/no/such/program"])
    assert result.returncode == 127
    assert result.stderr.strip().startswith("async-inspect: error: cannot start")
    assert "Traceback" not in result.stderr


def test_run_warns_when_no_python_reports() -> None:
    result = run_cli(["run", "--", "sleep", "6"], timeout=30)
    assert result.returncode == 0
    assert "no Python process has reported yet" in result.stderr


def test_demo_draws_the_spec_trace() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run([*CLI, "demo"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert "ada: {" in result.stdout
    assert result.stderr.count("Span: handle_request [") == 4
    assert "├─ Span: fetch_data [" in result.stderr
    assert "│  ├─ Span: db_query [" in result.stderr
    assert "failed error=PermissionError: eve may not read orders" in result.stderr
    assert "Span: slow_template [" in result.stderr and "cancelled" in result.stderr
