"""Prometheus metrics served by `run`: real target, real HTTP scrape, exact counts at 1%."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CLI, INTERPRETERS, TARGETS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


class Running:
    """`async-inspect run --metrics-port` on metrics_app.py, stopped after the test."""

    def __init__(self, *flags: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                *CLI,
                "run",
                "-q",
                "--no-tree",
                "--metrics-port",
                str(self.port),
                *flags,
                "--",
                INTERPRETERS[min(INTERPRETERS)],
                str(TARGETS / "metrics_app.py"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "done\n"

    def scrape_when(self, name: str, expected: float, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status, text = get(self.port, "/metrics")
            assert status == 200
            found = samples(text)
            if sum(v for _, v in found.get(name, [])) == expected or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def stop(self) -> str:
        _, stderr = self.process.communicate("\n", timeout=30)
        return stderr


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for run in started:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


def calls(found: dict, span_name: str, status: str) -> float:
    return sum(
        v
        for labels, v in found["traces_span_metrics_calls_total"]
        if labels["span_name"] == span_name and labels["status_code"] == status
    )


@pytest.mark.parametrize("sampler", ["traceidratio", "always_off"])
def test_span_metrics_are_exact_whatever_the_sampling(sampler: str, running: list[Running]) -> None:
    # GIVEN 300 requests, 100 of which fail inside, traced at 1% (or not at all)
    run = Running("--sampler", sampler, "--sampler-arg", "0.01")
    running.append(run)
    # WHEN Prometheus-style scraping /metrics
    found = run.scrape_when("traces_span_metrics_calls_total", 300 + 300 + 100 + 1)
    # THEN call counts and histograms are exact: counted before sampling
    assert calls(found, "handle", "STATUS_CODE_UNSET") == 300
    assert calls(found, "ok_call", "STATUS_CODE_UNSET") == 300
    assert calls(found, "bad_call", "STATUS_CODE_ERROR") == 100
    counts = {
        labels["span_name"]: v
        for labels, v in found["traces_span_metrics_duration_milliseconds_count"]
    }
    assert counts["ok_call"] == 300
    inf = [
        v
        for labels, v in found["traces_span_metrics_duration_milliseconds_bucket"]
        if labels["span_name"] == "ok_call" and labels["le"] == "+Inf"
    ]
    assert inf == [300]
    # AND far fewer spans than calls were recorded as traces
    received = sum(v for _, v in found["async_inspect_records_received_total"])
    assert received < 300 / 5
    finished = {labels["outcome"]: v for labels, v in found["async_inspect_tasks_finished_total"]}
    assert finished["completed"] == 301  # 300 gathered handle() tasks + main
    # AND sampling per trace records all the time
    assert [v for _, v in found["async_inspect_recorded_share"]] == [1.0]
    assert [v for _, v in found["async_inspect_recording"]] == [1.0]
    assert run.stop() == ""


@contextlib.contextmanager
def in_bursts(port: int) -> Iterator[subprocess.Popen[str]]:
    """burst_app.py for 4 s under `run --metrics-port PORT`, in bursts of 0.2 s, 25 % of the
    time; yielded once it is ready, and waited for (or killed) after."""
    app = subprocess.Popen(
        [*CLI, "run", "-q", "--no-tree", "--metrics-port", str(port), "--burst", "0.2",
         "--sampler", "traceidratio", "--sampler-arg", "0.25", "--",
         INTERPRETERS[min(INTERPRETERS)], str(TARGETS / "burst_app.py"), "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert app.stdout is not None and app.stdout.readline() == "ready\n"
        yield app
        app.communicate(timeout=30)
    finally:
        app.kill()
        app.wait()


def test_bursts_show_the_share_of_time_recorded() -> None:
    # GIVEN an app run in bursts of 0.2 s, 25 % of the time
    port = free_port()
    shares, recording = set(), set()
    with in_bursts(port):
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:  # WHEN scraping while it runs
            status, text = get(port, "/metrics")
            found = samples(text) if status == 200 else {}
            shares.update(v for _, v in found.get("async_inspect_recorded_share", []))
            recording.update(v for _, v in found.get("async_inspect_recording", []))
            time.sleep(0.1)
    # THEN the share scales its call rates, and the agent reported itself paused
    assert shares == {0.25}
    assert 0.0 in recording, recording


def test_tempo_naming_and_health_endpoints(running: list[Running]) -> None:
    run = Running("--metrics-naming", "tempo")
    running.append(run)
    found = run.scrape_when("traces_spanmetrics_calls_total", 701)
    latency = [labels for labels, _ in found["traces_spanmetrics_latency_bucket"]]
    assert {"service", "span_name", "span_kind", "status_code", "le"} == set(latency[0])
    assert get(run.port, "/healthz") == (200, "ok\n")
    assert get(run.port, "/readyz") == (200, "ready\n")
    run.stop()


def socket_folders() -> set[Path]:
    """The private folders `run` makes for its agents' socket, anywhere in the temp dir."""
    return set(Path(tempfile.gettempdir()).glob("async-inspect-*"))


def test_port_in_use_is_one_clear_line() -> None:
    folders = socket_folders()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [*CLI, "run", "--metrics-port", str(port), "--", "true"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 64
    assert result.stderr.strip() == (
        f"async-inspect: error: metrics port {port} on 127.0.0.1 is already in use "
        "(choose another --metrics-port)"
    )
    assert socket_folders() <= folders  # nothing left behind in /tmp


def test_bad_metrics_address_is_one_clear_line() -> None:
    folders = socket_folders()
    result = subprocess.run(
        [
            *CLI,
            "run",
            "--metrics-port",
            "0",
            "--metrics-address",
            "no-such-host.invalid",
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 64
    assert "bad metrics address 'no-such-host.invalid'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert socket_folders() <= folders  # nothing left behind in /tmp


def views(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """`async-inspect ps|top ... --api` against a session's own API."""
    api = f"http://127.0.0.1:{port}"
    return subprocess.run([*CLI, *args, "--api", api], capture_output=True, text=True, timeout=60)


def test_ps_and_top_read_a_sessions_api(running: list[Running]) -> None:
    # GIVEN a session serving its API (metrics_app.py waits for a line once it is done)
    run = Running()
    running.append(run)
    run.scrape_when("traces_span_metrics_calls_total", 300 + 300 + 100 + 1)
    pid = run.process.pid
    target = [p["pid"] for p in json.loads(get(run.port, "/api/processes")[1])["processes"]]
    # WHEN listing the processes, and taking one snapshot of the traced one
    ps = views(run.port, "ps")
    top = views(run.port, "top", str(target[0]), "--once")
    # THEN ps lists it as attached, and top shows its tasks and its spans' counts
    assert ps.returncode == 0, ps.stderr
    (row,) = [line.split() for line in ps.stdout.splitlines()[1:]]
    assert row[0] == str(target[0]) and row[1] == "attached" and target[0] != pid
    assert top.returncode == 0, top.stderr
    lines = top.stdout.splitlines()
    assert lines[0].startswith(f"PID {target[0]}") and "in bursts" not in lines[0]
    counts = {line.split()[-1]: line.split() for line in lines if line.endswith("_call")}
    assert counts["ok_call"][0] == "300" and counts["bad_call"][0] == "100"
    assert float(counts["bad_call"][2]) == 100.0  # ERR%
    # AND a PID it does not know is one clear line, exit non-zero
    unknown = views(run.port, "top", "999999", "--once")
    assert unknown.returncode != 0 and len(unknown.stderr.strip().splitlines()) == 1
    run.stop()


def test_top_says_when_the_agent_records_in_bursts() -> None:
    port = free_port()
    with in_bursts(port):
        time.sleep(1.5)  # a STATS frame has come
        processes = json.loads(get(port, "/api/processes")[1])["processes"]
        top = views(port, "top", str(processes[0]["pid"]), "--once")
    assert top.returncode == 0, top.stderr
    first = top.stdout.splitlines()[0]
    assert "in bursts: 25% of the time, " in first and first.endswith(("on now", "paused now"))
