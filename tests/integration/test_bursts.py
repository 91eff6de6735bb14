"""Recording in bursts (`--burst`), at a real OTLP/gRPC receiver: the target itself watches
when our events are on, and every span it sends starts while they are."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from tests.conftest import CLI, INTERPRETERS, TARGETS, interpreter_params, outside_tmp
from tests.integration.exporting import CLEAN_ENV, PYTHON, run
from tests.integration.probes import Session, Target
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

BURST, RATIO = 0.2, 0.25  # a burst every 0.8 s
SLACK_NS = 20_000_000  # the target looks every ~5 ms (more on a busy machine)
BURST_ARGS = ["--burst", str(BURST), "--sampler", "traceidratio", "--sampler-arg", str(RATIO)]


@dataclass
class Timeline:
    """What burst_app.py printed: when our events were on (wall clock, ns), its requests."""

    bursts: list[tuple[int, int]]
    requests: int

    @classmethod
    def parse(cls, stdout: str) -> Timeline:
        lines = [line.split() for line in stdout.splitlines() if line.strip()]
        clock = next(int(words[1]) for words in lines if words[0] == "clock")
        bursts = [(int(w[1]) + clock, int(w[2]) + clock) for w in lines if w[0] == "on"]
        requests = next(int(words[1]) for words in lines if words[0] == "requests")
        return cls(bursts, requests)

    def during_a_burst(self, t: int) -> bool:
        return any(start - SLACK_NS <= t <= end + SLACK_NS for start, end in self.bursts)


def check_bursts(timeline: Timeline, spans: list[ReceivedSpan], seconds: float) -> None:
    # The events were on in bursts of about BURST seconds, one every BURST / RATIO...
    assert len(timeline.bursts) >= seconds * RATIO / BURST - 1, timeline.bursts
    for start, end in timeline.bursts[:-1]:  # the last one may end with the app
        assert 0.1 <= (end - start) / 1e9 <= 0.6, timeline.bursts
    for (_, end), (start, _) in zip(timeline.bursts, timeline.bursts[1:], strict=False):
        assert (start - end) / 1e9 >= 0.4, timeline.bursts
    # ...every span started (or, adopted, was first seen running) during one...
    assert spans
    for span in spans:
        seen = span.start if not span.attributes.get("task.start_unknown") else span.events[0][1]
        assert timeline.during_a_burst(seen), (span.name, seen, timeline.bursts)
    # ...recording whole traces of the requests started then, a part of them...
    requests = [s for s in spans if s.name == "request"]
    steps = {s.parent_span_id for s in spans if s.name == "step"}
    assert 0 < len(requests) < 0.6 * timeline.requests, (len(requests), timeline.requests)
    completed = [s for s in requests if s.attributes["task.state"] == "completed"]
    assert len(completed) >= 0.9 * len(requests)
    whole = [s for s in completed if not s.attributes.get("task.start_unknown")]
    assert len(whole) >= 0.9 * len(completed) and {s.span_id for s in whole} <= steps
    # ...and the task that outlived every burst was cut at each end, then adopted again.
    watchman = [s for s in spans if s.name == "watchman"]
    assert len(watchman) >= len(timeline.bursts) - 1, watchman
    assert sum(s.attributes["task.state"] == "blocked" for s in watchman) >= 2
    assert sum(bool(s.attributes.get("task.start_unknown")) for s in watchman) >= 1


@pytest.mark.parametrize("version", interpreter_params())
def test_run_records_in_bursts_with_every_event_off_between(
    version: str, receiver: OtlpReceiver
) -> None:
    # GIVEN an app making a request every 5 ms for 3.5 s, run with bursts of 0.2 s at 25 %
    seconds = 3.5
    result = run(
        "--endpoint", receiver.endpoint, *BURST_ARGS, "--",
        INTERPRETERS[version], str(TARGETS / "burst_app.py"), str(seconds),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # THEN the events were on in bursts only, and the spans come from those bursts
    timeline = Timeline.parse(result.stdout)
    assert receiver.wait_for(lambda s: any(x.name == "request" for x in s))
    check_bursts(timeline, receiver.spans(), seconds)


def test_attach_records_in_bursts(receiver: OtlpReceiver) -> None:
    # GIVEN the app running, WHEN a session attaches with bursts until the app exits
    seconds = 6.0
    target = subprocess.Popen(
        [PYTHON, str(outside_tmp(TARGETS / "burst_app.py")), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert target.stdout is not None and target.stdout.readline().strip() == "ready"
        session = subprocess.run(
            [*CLI, "attach", str(target.pid), "--endpoint", receiver.endpoint, "--no-tree",
             *BURST_ARGS],
            capture_output=True, text=True, timeout=60, env=CLEAN_ENV,
        )  # fmt: skip
        stdout, _ = target.communicate(timeout=30)
    finally:
        target.kill()
        target.wait(10)
    assert session.returncode == 0, session.stderr
    assert "; recording 0.2s every 0.8s; Ctrl-C to detach" in session.stderr
    assert f"PID {target.pid} exited" in session.stderr
    # THEN the same holds from the attach on (the first burst starts with it)
    timeline = Timeline.parse(stdout)
    assert receiver.wait_for(lambda s: any(x.name == "request" for x in s))
    check_bursts(timeline, receiver.spans(), seconds - 2.0)


@pytest.mark.parametrize("version", interpreter_params())
def test_detach_between_bursts_leaves_nothing(version: str) -> None:
    # GIVEN a target probed from the inside, attached with bursts of 0.1 s every 0.4 s
    target = Target(INTERPRETERS[version], "idle")
    try:
        before = target.probe()
        session = Session(target.pid, "--no-tree", "--burst", "0.1", "--sampler",
                          "traceidratio", "--sampler-arg", "0.25")  # fmt: skip
        session.wait_for("attached")
        for _ in range(8):  # requests over several bursts and pauses
            assert target.send("request") == "ok"
            time.sleep(0.15)
        # WHEN Ctrl-C, in a burst or between two
        status, stderr = session.interrupt()
        # THEN it detached cleanly, and nothing of ours is left: tool id, threads, modules
        assert status == 0, stderr
        assert f"detached from PID {target.pid}" in stderr
        assert target.probe() == before
        assert target.alive()
    finally:
        target.stop()


def test_bursts_need_a_sampling_ratio() -> None:
    # WHEN bursts are asked for without a ratio below 1 (the share of time to record)
    result = run("--burst", "0.2", "--", sys.executable, "-c", "pass")
    # THEN a usage error says what is missing and how to give it, and nothing runs
    assert result.returncode == 64, result.stderr
    assert "need a sampling ratio between 0 and 1" in result.stderr
    assert "--sampler traceidratio --sampler-arg" in result.stderr
