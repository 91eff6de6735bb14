"""The workloads: how each target is driven and what it measures.

W1 `chains` measures itself (targets/chains.py prints its RESULT line); W2 `http` is an
aiohttp server (targets/hello_server.py) and W3 `service` an aiohttp service with a TCP
backend (targets/service_app.py, targets/kv_backend.py), both driven by wrk from the load CPU.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .meter import Meter, Window
from .modes import Started
from .procs import BenchError, Children, pinned

__all__ = ["Chains", "Http", "Metric", "Service", "Workload", "parse_wrk"]

TARGETS = Path(__file__).resolve().parent / "targets"
LINE_SLACK = 30.0  # seconds beyond the expected time before a target counts as stuck


@dataclass(frozen=True)
class Metric:
    """One number a workload reports (or, with `per_cpu_of`, one derived from it)."""

    key: str
    unit: str
    higher_is_better: bool
    per_cpu_of: str | None = None  # this = that metric / CPU share the target got

    def derive(self, metrics: dict[str, float], target_share: float | None) -> float | None:
        """The derived value, if this metric is derived and can be computed."""
        if self.per_cpu_of is None or not target_share or self.per_cpu_of not in metrics:
            return None
        return metrics[self.per_cpu_of] / target_share


class Workload(Protocol):
    """Drives a started target through warm-up and one measurement window."""

    name: str
    title: str
    metrics: tuple[Metric, ...]

    def prepare(self, children: Children) -> None:
        """Start what every run of this workload shares (W3's backend), once."""
        ...

    def target(self) -> list[str]:
        """The target script and its arguments (the interpreter comes from the mode)."""
        ...

    def exercise(self, started: Started, ready_line: str, seconds: float) -> None:
        """Run the workload's load for `seconds`, unmeasured (a mode's warm-up)."""
        ...

    def measure(
        self, started: Started, ready_line: str, meter: Meter
    ) -> tuple[dict[str, float], Window]:
        """Warm up, then measure between `meter.begin()` and `meter.end()`."""
        ...

    def finish(self, started: Started) -> None:
        """Ask the target to exit (it may already be on its way)."""
        ...


def field_value(line: str, name: str) -> str:
    """`value` of `name=value` in a protocol line; BenchError if missing."""
    match = re.search(rf"\b{re.escape(name)}=(\S+)", line)
    if match is None:
        raise BenchError(f"no {name}= in {line!r}")
    return match.group(1)


class Chains:
    """W1: asyncio tasks awaiting a three-deep coroutine chain; chains per second."""

    name = "W1"
    metrics: tuple[Metric, ...] = (
        Metric("chains_per_s", "chains/s", higher_is_better=True),
        Metric("chains_per_cpu_s", "chains/CPU-s", True, per_cpu_of="chains_per_s"),
    )

    def __init__(self, tasks: int, warmup: float, duration: float) -> None:
        self.tasks, self.warmup, self.duration = tasks, warmup, duration
        self.title = f"W1 chains: {tasks} tasks, 3-deep chain + sleep(0), {duration:g}s window"

    def prepare(self, children: Children) -> None:
        pass

    def exercise(self, started: Started, ready_line: str, seconds: float) -> None:
        time.sleep(seconds)  # its workers run from READY on

    def target(self) -> list[str]:
        return [
            str(TARGETS / "chains.py"),
            *("--tasks", str(self.tasks)),
            *("--warmup", str(self.warmup), "--duration", str(self.duration)),
        ]

    def measure(
        self, started: Started, ready_line: str, meter: Meter
    ) -> tuple[dict[str, float], Window]:
        started.outer.send("go")
        started.outer.expect("START", self.warmup + LINE_SLACK)
        meter.begin()
        result = started.outer.expect("RESULT", self.duration + LINE_SLACK)
        window = meter.end()
        return {"chains_per_s": float(field_value(result, "chains_per_s"))}, window

    def finish(self, started: Started) -> None:
        pass  # it exits by itself after its RESULT line


class Http:
    """W2: aiohttp hello world under wrk; requests per second and p99 latency."""

    name = "W2"
    metrics: tuple[Metric, ...] = (
        Metric("requests_per_s", "req/s", higher_is_better=True),
        Metric("requests_per_cpu_s", "req/CPU-s", True, per_cpu_of="requests_per_s"),
        Metric("p99_ms", "p99 ms", higher_is_better=False),
    )

    def __init__(
        self, connections: int, warmup: float, duration: float, load_cpu: int | None
    ) -> None:
        self.connections, self.warmup, self.duration = connections, warmup, duration
        self.load_cpu = load_cpu
        self.title = (
            f"W2 http: aiohttp hello world, wrk -t1 -c{connections} -d{duration:g}s --latency"
        )

    def prepare(self, children: Children) -> None:
        pass

    def target(self) -> list[str]:
        return [str(TARGETS / "hello_server.py")]

    def url(self, ready_line: str) -> str:
        """Where wrk sends its requests."""
        return f"http://127.0.0.1:{field_value(ready_line, 'port')}/"

    def exercise(self, started: Started, ready_line: str, seconds: float) -> None:
        self._wrk(self.url(ready_line), seconds)

    def measure(
        self, started: Started, ready_line: str, meter: Meter
    ) -> tuple[dict[str, float], Window]:
        url = self.url(ready_line)
        self._wrk(url, self.warmup)
        meter.begin()
        output = self._wrk(url, self.duration)
        window = meter.end()
        return parse_wrk(output), window

    def finish(self, started: Started) -> None:
        # Under `run` the CLI forwards SIGTERM to the server, which shuts down cleanly.
        started.outer.signal(signal.SIGTERM)

    def _wrk(self, url: str, seconds: float) -> str:
        whole = max(1, round(seconds))  # wrk takes whole seconds only
        argv = pinned(
            self.load_cpu,
            ["wrk", "-t1", f"-c{self.connections}", f"-d{whole}s", "--latency",
             "--timeout", "2s", url],
        )  # fmt: skip
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=seconds + LINE_SLACK, check=False
            )
        except FileNotFoundError:
            raise BenchError("wrk is not installed: apt-get install -y wrk") from None
        except subprocess.TimeoutExpired:
            raise BenchError(f"wrk did not finish within {seconds + LINE_SLACK:.0f}s") from None
        if done.returncode != 0:
            raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout


class Service(Http):
    """W3: a typical service (~1 ms of work per request: a backend round trip, JSON, three
    nested application coroutines) under wrk; requests per second and p99 latency.

    Its backend, kv_backend.py, is one process for the whole benchmark, started by `prepare`
    and pinned with the load generator: it is the service's environment, not the target.
    """

    name = "W3"

    def __init__(
        self,
        connections: int,
        warmup: float,
        duration: float,
        load_cpu: int | None,
        items: int = 50,
    ) -> None:
        super().__init__(connections, warmup, duration, load_cpu)
        self.items = items
        self.backend_port: int | None = None
        self.title = (
            f"W3 service: aiohttp + TCP backend, {items}-item orders, ~1 ms/request, "
            f"wrk -t1 -c{connections} -d{duration:g}s --latency"
        )

    def prepare(self, children: Children) -> None:
        backend = children.start(
            "kv-backend",
            pinned(self.load_cpu, [sys.executable, str(TARGETS / "kv_backend.py"),
                                   "--items", str(self.items)]),
        )  # fmt: skip
        self.backend_port = int(field_value(backend.expect("READY", 30.0), "port"))

    def target(self) -> list[str]:
        if self.backend_port is None:
            raise BenchError("W3's backend was not started (Service.prepare)")
        return [str(TARGETS / "service_app.py"), "--backend-port", str(self.backend_port),
                "--pool", str(self.connections + 14)]  # fmt: skip

    def url(self, ready_line: str) -> str:
        return f"http://127.0.0.1:{field_value(ready_line, 'port')}/order/1042"


UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(output: str) -> dict[str, float]:
    """requests_per_s, p99_ms and error counts from `wrk --latency` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
    if rps is None or p99 is None:
        raise BenchError(f"cannot parse wrk output:\n{output}")
    metrics = {
        "requests_per_s": float(rps.group(1)),
        "p99_ms": float(p99.group(1)) * UNITS_MS[p99.group(2)],
    }
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    metrics["errors"] = float(
        (sum(int(n) for n in errors.groups()) if errors else 0)
        + (int(non_2xx.group(1)) if non_2xx else 0)
    )
    return metrics
