"""Node daemon scaling: its CPU and RSS with 1, 10 and 50 attached apps, and time to attach.

    .venv/bin/python -m benchmarks.daemon_scaling [--quick] [--counts 0,1,10,50] [--json FILE]

For each count, that many targets/steady_app.py processes (a few requests per second each,
4 spans per request) are started with ASYNC_INSPECT_ENABLE=1; then `async-inspect collector
--interval 1` starts, exporting to an OTLP receiver. Reported: the time from the daemon's
start until it lists every app as attached; then, after a settling pause, its CPU (% of one
CPU) and RSS over a steady window. The apps share one CPU, the daemon and the receiver the
other. Count 0 is the daemon scanning the node with nothing to attach: the fixed cost.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import statistics
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from .environment import free_port, load_note, write_json
from .harness import add_placement_options, add_run_options, run_children
from .procs import BenchError, Child, Children, pinned
from .receiver import Receiver
from .table import grid
from .workloads import field_value

TARGET = Path(__file__).resolve().parent / "targets" / "steady_app.py"


@dataclass
class CountResult:
    apps: int
    attached_after_s: float | None = None  # daemon start to every app attached
    cpu_percent: float | None = None  # of one CPU, over the steady window
    rss_mb: float | None = None  # at the end of the window
    children_cpu_s: float | None = None  # gdb and other helpers it ran, over the whole run
    spans_per_s: float | None = None  # exported, over the window
    python_processes: int = 0  # CPython processes on the node the daemon scans
    exit_s: float | None = None  # SIGTERM to exit (detaching from all)
    error: str | None = None


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def statuses(api: str) -> dict[int, str]:
    try:
        return {p["pid"]: p["status"] for p in http_json(f"{api}/api/processes")["processes"]}
    except (OSError, ValueError, KeyError):
        return {}


def config(folder: Path, token: str) -> Path:
    """Select exactly our apps: other daemons' test processes on this machine may opt in too."""
    path = folder / f"daemon-{token}.toml"
    path.write_text(
        "[collector]\ninterval = 1\nmax_processes = 1000\n\n"
        f'[[select]]\nenv = "ASYNC_INSPECT_BENCH_RUN={token}"\n'
    )
    return path


def python_processes() -> int:
    count = 0
    for process in psutil.process_iter(["name"]):
        if "python" in (process.info["name"] or "").lower():
            count += 1
    return count


def measure_count(
    children: Children, receiver: Receiver, args: argparse.Namespace, apps: int, logs: Path
) -> CountResult:
    result = CountResult(apps)
    token = secrets.token_hex(8)
    started: list[Child] = []
    daemon: Child | None = None
    try:
        pids = []
        for index in range(apps):
            app = children.start(
                f"app{apps}-{index}",
                pinned(args.target_cpu, [args.python, str(TARGET), "--rate", str(args.rate)]),
                env={"ASYNC_INSPECT_ENABLE": "1", "ASYNC_INSPECT_BENCH_RUN": token,
                     "OTEL_SERVICE_NAME": f"bench-daemon-{apps}-{index}"},
            )  # fmt: skip
            started.append(app)
        for app in started:
            pids.append(int(field_value(app.expect("READY", 60.0), "pid")))
        result.python_processes = python_processes()
        port = free_port()
        api = f"http://127.0.0.1:{port}"
        begun = time.monotonic()
        daemon = children.start(
            f"daemon-{apps}",
            pinned(args.collector_cpu,
                   [sys.executable, "-m", "profiler", "collector", "--interval", "1",
                    "--config", str(config(logs, token)), "--endpoint", receiver.endpoint,
                    "--metrics-port", str(port), "--metrics-address", "127.0.0.1",
                    "--no-tree"]),
        )  # fmt: skip
        while True:
            seen = statuses(api)
            if seen and all(seen.get(pid) == "attached" for pid in pids):
                break
            if daemon.popen.poll() is not None:
                raise BenchError(f"the daemon exited:\n{daemon.stderr_tail()}")
            if time.monotonic() - begun > args.attach_timeout:
                waiting = {
                    pid: seen.get(pid, "unseen") for pid in pids if seen.get(pid) != "attached"
                }
                raise BenchError(f"not all attached after {args.attach_timeout:.0f}s: "
                                 f"{dict(list(waiting.items())[:5])}")  # fmt: skip
            time.sleep(0.1)
        result.attached_after_s = time.monotonic() - begun
        time.sleep(args.settle)
        process = psutil.Process(daemon.pid)
        services = [f"bench-daemon-{apps}-{i}" for i in range(apps)]
        spans_before = sum(receiver.received(s).spans for s in services)
        cpu_before, t_before = sum(process.cpu_times()[:2]), time.monotonic()
        rss_samples = []
        while time.monotonic() - t_before < args.window:
            time.sleep(min(1.0, args.window))
            rss_samples.append(process.memory_info().rss / 2**20)
        window = time.monotonic() - t_before
        times = process.cpu_times()
        result.cpu_percent = 100 * (sum(times[:2]) - cpu_before) / window
        result.children_cpu_s = times.children_user + times.children_system
        result.rss_mb = statistics.median(rss_samples)
        spans_after = sum(receiver.received(s).spans for s in services)
        result.spans_per_s = (spans_after - spans_before) / window
        stopping = time.monotonic()
        daemon.signal(signal.SIGTERM)
        daemon.wait(60.0)
        result.exit_s = time.monotonic() - stopping
    except (BenchError, psutil.Error) as exc:
        result.error = str(exc)
    finally:
        for child in [daemon, *started]:
            if child is not None:
                children.stop(child)
    return result


def sizing(results: list[CountResult]) -> list[str]:
    """A straight line through the measured points, for nodes with hundreds of processes."""
    points = [(r.apps, r.cpu_percent, r.rss_mb) for r in results
              if r.cpu_percent is not None and r.rss_mb is not None]  # fmt: skip
    if len({n for n, _, _ in points}) < 2:
        return []
    xs = [float(n) for n, _, _ in points]
    cpu = statistics.linear_regression(xs, [c for _, c, _ in points])
    rss = statistics.linear_regression(xs, [m for _, _, m in points])
    lines = [
        f"fit: CPU ~ {cpu.intercept:.1f}% + {cpu.slope:.2f}% per app; "
        f"RSS ~ {rss.intercept:.0f} MB + {rss.slope:.2f} MB per app",
    ]
    for n in (100, 200, 500):
        lines.append(
            f"  {n} apps: ~{cpu.intercept + cpu.slope * n:.0f}% of a CPU, "
            f"~{rss.intercept + rss.slope * n:.0f} MB (straight-line extrapolation)"
        )
    return lines


def render(results: list[CountResult], args: argparse.Namespace) -> str:
    def value(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    header = ["apps", "all attached after s", "daemon CPU", "daemon RSS MB", "spans/s exported",
              "helpers CPU s", "exit s", "python procs on node"]  # fmt: skip
    rows = [
        [str(r.apps), value(r.attached_after_s, ".1f"),
         "-" if r.cpu_percent is None else f"{r.cpu_percent:.1f}%", value(r.rss_mb, ".0f"),
         value(r.spans_per_s, ",.0f"), value(r.children_cpu_s, ".1f"), value(r.exit_s, ".1f"),
         str(r.python_processes)]
        for r in results
    ]  # fmt: skip
    lines = [
        f"node daemon: `async-inspect collector --interval 1`, apps at {args.rate:g} requests/s "
        f"each (4 spans/request), {args.window:g}s window after {args.settle:g}s settling",
        *grid(header, rows),
        "",
        *sizing(results),
    ]
    lines += [f"!! FAILED {r.apps} apps: {r.error}" for r in results if r.error]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.daemon_scaling", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="counts 0,1,10; 10 s windows")
    parser.add_argument("--counts", help="apps per step (default 0,1,10,50)")
    parser.add_argument("--rate", type=float, default=3.0, help="requests/s per app (3)")
    parser.add_argument("--window", type=float, help="seconds measured (default 30, quick 10)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after all attached")
    parser.add_argument("--attach-timeout", type=float, default=300.0)
    add_placement_options(parser, "apps", "daemon")
    add_run_options(parser)
    args = parser.parse_args(argv)
    args.counts = args.counts or ("0,1,10" if args.quick else "0,1,10,50")
    args.window = args.window or (10.0 if args.quick else 30.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [int(n) for n in args.counts.split(",") if n.strip()]
    if shutil.which("gdb") is None:
        print("warning: gdb is missing: 3.12/3.13 apps cannot be attached", file=sys.stderr)
    results: list[CountResult] = []

    def body(children: Children, logs: Path) -> None:
        receiver = Receiver.start(children, args.collector_cpu)
        for apps in counts:
            result = measure_count(children, receiver, args, apps, logs)
            results.append(result)
            shown = result.error or (
                f"attached in {result.attached_after_s:.1f}s, CPU {result.cpu_percent:.1f}%, "
                f"RSS {result.rss_mb:.0f} MB"
            )
            print(f"[{apps} apps] {shown}", file=sys.stderr, flush=True)

    stopped = run_children(args, "daemon", body)
    if stopped is not None:
        return stopped
    print()
    print(render(results, args))
    print(f"\n{load_note()}")
    if args.json:
        write_json(args.json, vars(args), {"counts": [asdict(r) for r in results]})
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
