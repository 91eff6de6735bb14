"""Memory: what the agent costs per live task, and whether the node daemon's RSS stays flat.

    .venv/bin/python -m benchmarks.memory [--quick] [--minutes M] [--json FILE]

Part 1, per task: targets/live_tasks.py holds `--tasks` (10,000) tasks blocked on an Event;
it measures from the inside what its Python heap (tracemalloc) and its resident set grew by
while they were created. Plain python, `async-inspect run`, and `async-inspect attach` (the
agent attached before the tasks exist) run interleaved; the agent's cost per live task is
(growth with the agent - growth without) / tasks, each against the baseline of its round.

Part 2, the daemon over time: `async-inspect collector` exporting to an OTLP receiver while
targets/steady_app.py (started with ASYNC_INSPECT_ENABLE=1) streams spans to it at a fixed
rate; the daemon's RSS is sampled every `--sample-every` seconds for `--minutes` (default 1:
a smoke run; 10 for the real one). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from .environment import free_port, load_note, write_json
from .harness import add_placement_options, add_run_options, run_children
from .procs import BenchError, Child, Children, pinned
from .receiver import Receiver
from .summary import Spread, spread
from .table import grid
from .workloads import field_value

TARGETS = Path(__file__).resolve().parent / "targets"
TASK_GOAL = 1024  # bytes per live task, issue 6
MODES = ("baseline", "run", "attached")
MEASURES = ("tracemalloc", "rss")


# ---- part 1: bytes per live task -------------------------------------------------------------


@dataclass
class TaskSample:
    """One live_tasks.py run."""

    mode: str
    measure: str  # tracemalloc | rss: which run (tracemalloc itself inflates the RSS)
    round: int
    tasks: int = 0
    grew_bytes: int | None = None  # heap (tracemalloc) or RSS growth over the task creation
    top: list[str] = field(default_factory=list)  # tracemalloc: the sites that grew most
    error: str | None = None


def cli(cpu: int | None, *args: str) -> list[str]:
    return pinned(cpu, [sys.executable, "-m", "profiler", *args])


def live_tasks_once(
    children: Children, args: argparse.Namespace, mode: str, measure: str, round_no: int
) -> TaskSample:
    sample = TaskSample(mode, measure, round_no)
    target = [args.python, str(TARGETS / "live_tasks.py"), "--tasks", str(args.tasks)]
    if measure == "tracemalloc":
        target.append("--tracemalloc")
    target = pinned(args.target_cpu, target)
    name = f"tasks-{mode}-{measure}-r{round_no}"
    service = f"bench-memory-{mode}-r{round_no}"
    if mode == "run":
        argv = [*cli(args.collector_cpu, "run", "--no-tree", "--service-name", service), "--",
                *target]  # fmt: skip
    else:
        argv = target
    outer = children.start(name, argv)
    session: Child | None = None
    try:
        pid = int(field_value(outer.expect("READY", 60.0), "pid"))
        if mode == "attached":
            session = children.start(
                f"attach-{name}",
                cli(args.collector_cpu, "attach", str(pid), "--no-tree", "--service-name", service),
            )
            session.expect_stderr("async-inspect: attached to PID", 60.0)
        outer.send("go")
        while (line := outer.expect("", 120.0)).startswith("TOP "):
            sample.top.append(line[4:])
        result = line
        if not result.startswith("RESULT"):
            raise BenchError(f"{name}: unexpected line {result!r}")
        sample.tasks = int(field_value(result, "tasks"))
        key = "traced_bytes" if measure == "tracemalloc" else "rss_bytes"
        sample.grew_bytes = int(field_value(result, key))
        status = outer.wait(60.0)
        if status != 0:
            raise BenchError(f"{name} exited with {status}:\n{outer.stderr_tail()}")
        if session is not None:
            session.wait(60.0)  # the target exited: the session ends by itself
    except BenchError as exc:
        sample.error = str(exc)
    finally:
        for child in (session, outer):
            if child is not None:
                children.stop(child)
    return sample


@dataclass
class TaskRow:
    mode: str
    measure: str
    grew_bytes: Spread | None  # absolute growth over the task creation
    per_task_bytes: Spread | None  # (growth - baseline growth of the round) / tasks


def per_task(samples: list[TaskSample]) -> list[TaskRow]:
    rows = []
    for measure in MEASURES:
        base = {
            s.round: s
            for s in samples
            if s.mode == "baseline" and s.measure == measure and s.grew_bytes is not None
        }
        for mode in MODES:
            mine = [
                s for s in samples
                if s.mode == mode and s.measure == measure and s.grew_bytes is not None
            ]  # fmt: skip
            extra = [
                (s.grew_bytes - base[s.round].grew_bytes) / s.tasks  # type: ignore[operator]
                for s in mine
                if s.round in base and s.tasks
            ]
            rows.append(
                TaskRow(
                    mode,
                    measure,
                    spread([float(s.grew_bytes) for s in mine]),  # type: ignore[arg-type]
                    spread(extra) if mode != "baseline" else None,
                )
            )
    return rows


def render_sites(samples: list[TaskSample]) -> list[str]:
    """Where the heap grew, per task, in the first round's tracemalloc runs."""
    lines = []
    for s in samples:
        if s.measure != "tracemalloc" or s.round != 1 or not s.top or not s.tasks:
            continue
        lines.append(f"where the heap grew, {s.mode} (bytes per task, allocations per task):")
        for entry in s.top:
            size, count, where = entry.split(" ", 2)
            short = "/".join(where.split("/")[-2:])
            lines.append(f"  {int(size) / s.tasks:8.0f} B  {int(count) / s.tasks:5.1f}  {short}")
    return lines


def render_tasks(rows: list[TaskRow], tasks: int, rounds: int) -> str:
    def kb(value: Spread | None, scale: float = 1.0) -> str:
        if value is None:
            return "-"
        if value.min == value.max:
            return f"{value.median / scale:,.0f}"
        return f"{value.median / scale:,.0f} [{value.min / scale:,.0f}-{value.max / scale:,.0f}]"

    header = ["mode", "measure", "grew KB med [min-max]", "agent B/task med [min-max]",
              "<= 1 KB/task"]  # fmt: skip
    table = [
        [row.mode, row.measure, kb(row.grew_bytes, 1024), kb(row.per_task_bytes),
         "-" if row.per_task_bytes is None else
         ("ok" if row.per_task_bytes.median <= TASK_GOAL else "MISS")]
        for row in rows
    ]  # fmt: skip
    title = f"agent memory per live task: {tasks:,} tasks blocked on an Event ({rounds} rounds)"
    notes = [
        "tracemalloc: the Python heap (everything the agent allocates through Python's "
        "allocators);",
        "rss: the resident set, from a run without tracemalloc (also native memory; coarser, "
        "pages and arenas).",
    ]
    return "\n".join([title, *grid(header, table), "", *notes])


# ---- part 2: the daemon's RSS over a long run ------------------------------------------------


@dataclass
class RssSample:
    seconds: float
    rss_mb: float
    cpu_percent: float  # of one CPU, since the previous sample
    spans_received: int
    target_rss_mb: float


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def wait_attached(api: str, pid: int, timeout: float) -> float:
    """Seconds until the daemon lists `pid` as attached."""
    begun = time.monotonic()
    while time.monotonic() - begun < timeout:
        try:
            processes = http_json(f"{api}/api/processes")["processes"]
        except OSError:
            processes = []
        if any(p["pid"] == pid and p["status"] == "attached" for p in processes):
            return time.monotonic() - begun
        time.sleep(0.2)
    raise BenchError(f"the daemon did not attach to PID {pid} within {timeout:.0f}s")


def daemon_config(folder: Path, token: str) -> Path:
    """Select exactly our targets (other daemons' test processes may opt in too)."""
    path = folder / "daemon.toml"
    path.write_text(
        f"[collector]\ninterval = 1\nmax_processes = 1000\n\n"
        f'[[select]]\nenv = "ASYNC_INSPECT_BENCH_RUN={token}"\n'
    )
    return path


def slope_mb_per_min(samples: list[RssSample]) -> float | None:
    """Least-squares slope of RSS over time, MB per minute."""
    if len(samples) < 3:
        return None
    xs = [s.seconds / 60 for s in samples]
    ys = [s.rss_mb for s in samples]
    return float(statistics.linear_regression(xs, ys).slope)


def daemon_rss(children: Children, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    receiver = Receiver.start(children, args.collector_cpu)
    token = secrets.token_hex(8)
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    daemon = children.start(
        "daemon",
        cli(args.collector_cpu, "collector", "--config", str(daemon_config(logs, token)),
            "--endpoint", receiver.endpoint, "--metrics-port", str(port),
            "--metrics-address", "127.0.0.1", "--no-tree"),
    )  # fmt: skip
    service = "bench-memory-steady"
    app = children.start(
        "steady-app",
        pinned(args.target_cpu, [args.python, str(TARGETS / "steady_app.py"),
                                 "--rate", str(args.rate)]),
        env={"ASYNC_INSPECT_ENABLE": "1", "ASYNC_INSPECT_BENCH_RUN": token,
             "OTEL_SERVICE_NAME": service},
    )  # fmt: skip
    pid = int(field_value(app.expect("READY", 60.0), "pid"))
    attached_after = wait_attached(api, pid, 60.0)
    time.sleep(args.warmup)  # spans flowing, the exporter's queues and batches in use
    print(
        f"daemon attached to the steady app after {attached_after:.1f}s; after "
        f"{args.warmup:g}s of warm-up, sampling every {args.sample_every:g}s for "
        f"{args.minutes:g} min",
        file=sys.stderr,
        flush=True,
    )
    proc, target = psutil.Process(daemon.pid), psutil.Process(pid)
    samples: list[RssSample] = []
    begun = time.monotonic()
    last_cpu, last_t = sum(proc.cpu_times()[:2]), begun
    end = begun + args.minutes * 60
    while True:
        now = time.monotonic()
        cpu = sum(proc.cpu_times()[:2])
        sample = RssSample(
            now - begun,
            proc.memory_info().rss / 2**20,
            100 * (cpu - last_cpu) / (now - last_t) if now > last_t else 0.0,
            receiver.received(service).spans,
            target.memory_info().rss / 2**20,
        )
        samples.append(sample)
        last_cpu, last_t = cpu, now
        print(f"  {sample.seconds:6.0f}s  daemon RSS {sample.rss_mb:7.1f} MB  CPU "
              f"{sample.cpu_percent:5.1f}%  spans {sample.spans_received:,}",
              file=sys.stderr, flush=True)  # fmt: skip
        if now >= end:
            break
        time.sleep(min(args.sample_every, max(0.0, end - time.monotonic())))
        if daemon.popen.poll() is not None:
            raise BenchError(f"the daemon died:\n{daemon.stderr_tail()}")
    children.stop(app)
    children.stop(daemon)
    half = samples[len(samples) // 2 :]
    return {
        "rate": args.rate,
        "attached_after_s": attached_after,
        "samples": [asdict(s) for s in samples],
        "first_mb": samples[0].rss_mb,
        "last_mb": samples[-1].rss_mb,
        "max_mb": max(s.rss_mb for s in samples),
        "slope_mb_per_min": slope_mb_per_min(samples),
        "slope_second_half_mb_per_min": slope_mb_per_min(half),
        "spans_per_s": (samples[-1].spans_received - samples[0].spans_received)
        / max(samples[-1].seconds - samples[0].seconds, 1e-9),
        "daemon_cpu_percent": statistics.median(s.cpu_percent for s in samples[1:])
        if len(samples) > 1
        else None,
    }


def render_rss(result: dict[str, Any], minutes: float) -> str:
    def mb(value: float | None) -> str:
        return "-" if value is None else f"{value:+.2f}"

    header = ["first MB", "last MB", "max MB", "slope MB/min", "slope 2nd half MB/min",
              "spans/s exported", "daemon CPU med"]  # fmt: skip
    cpu = result["daemon_cpu_percent"]
    row = [f"{result['first_mb']:.1f}", f"{result['last_mb']:.1f}", f"{result['max_mb']:.1f}",
           mb(result["slope_mb_per_min"]), mb(result["slope_second_half_mb_per_min"]),
           f"{result['spans_per_s']:,.0f}", "-" if cpu is None else f"{cpu:.1f}%"]  # fmt: skip
    title = (f"node daemon RSS over {minutes:g} min: `async-inspect collector` exporting, one "
             f"app at {result['rate']:g} requests/s (4 spans each)")  # fmt: skip
    return "\n".join([title, *grid(header, [row])])


# ---- the command ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.memory", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="1 round, 30 s of daemon RSS")
    parser.add_argument("--rounds", type=int, help="rounds of part 1 (default 3, --quick 1)")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, help="part 2 duration (default 1, --quick 0.5)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds (10)")
    parser.add_argument(
        "--warmup", type=float, default=10.0, help="seconds of streaming before the first sample"
    )
    parser.add_argument(
        "--rate", type=float, default=500.0, help="requests/s of part 2's app (500: 2,000 spans/s)"
    )
    parser.add_argument("--parts", default="tasks,daemon", help="tasks,daemon")
    add_placement_options(parser, "targets", "CLI or daemon")
    add_run_options(parser)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.minutes = args.minutes if args.minutes is not None else (0.5 if args.quick else 1.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",")}
    samples: list[TaskSample] = []
    rss: dict[str, Any] | None = None
    failed = 0

    def body(children: Children, logs: Path) -> None:
        nonlocal failed, rss
        if "tasks" in parts:
            for round_no in range(1, args.rounds + 1):
                for measure in MEASURES:
                    for mode in MODES:
                        sample = live_tasks_once(children, args, mode, measure, round_no)
                        samples.append(sample)
                        shown = sample.error or f"grew {sample.grew_bytes:,} bytes"
                        print(f"[round {round_no} {measure:<11} {mode:<8}] {shown}",
                              file=sys.stderr, flush=True)  # fmt: skip
        if "daemon" in parts:
            try:
                rss = daemon_rss(children, args, logs)
            except BenchError as exc:
                print(f"!! daemon RSS run FAILED: {exc}", file=sys.stderr)
                failed += 1

    stopped = run_children(args, "memory", body)
    if stopped is not None:
        return stopped
    rows = per_task(samples) if samples else []
    if rows:
        print()
        print(render_tasks(rows, args.tasks, args.rounds))
        print()
        print("\n".join(render_sites(samples)))
        for s in samples:
            if s.error:
                failed += 1
                print(f"!! FAILED {s.mode} {s.measure} round {s.round}: {s.error}")
    if rss is not None:
        print()
        print(render_rss(rss, args.minutes))
    print(f"\n{load_note()}")
    if args.json:
        document = {"per_task": [asdict(r) for r in rows],
                    "task_samples": [asdict(s) for s in samples], "daemon_rss": rss}  # fmt: skip
        write_json(args.json, vars(args), document)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
