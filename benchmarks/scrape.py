"""Scrape time: how long `/metrics` takes to answer with many live series, under load.

    .venv/bin/python -m benchmarks.scrape [--quick] [--names 500,3000] [--json FILE]

For each size, targets/many_names.py calls that many distinct coroutine functions round-robin
(`--rate` calls/s) under `async-inspect run --metrics-port P --max-span-names 5000`, exporting
to an OTLP receiver; once every name shows on /metrics, it is scraped `--scrapes` times
(a new connection each, `--gap` s apart) while the target keeps running. Each span name has
20 series (calls + a 16-bucket histogram with +Inf, sum and count), so 500 names are about
10k series and 3,000 about 60k. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from .environment import free_port, load_note, write_json
from .harness import add_placement_options, add_run_options, run_children
from .procs import BenchError, Children, pinned
from .receiver import Receiver
from .summary import percentile
from .table import grid
from .workloads import field_value

TARGET = Path(__file__).resolve().parent / "targets" / "many_names.py"
NAME = re.compile(r'^traces_span_metrics_calls_total\{[^}]*span_name="f_\d+"', re.MULTILINE)


@dataclass
class SizeResult:
    names: int
    series: int = 0  # sample lines in the body
    body_kb: float = 0.0
    ready_after_s: float = 0.0  # until every name was on /metrics
    times_ms: list[float] = field(default_factory=list)
    cli_cpu_percent: float | None = None  # the CLI's CPU while being scraped
    spans_received: int = 0
    error: str | None = None

    @property
    def p50(self) -> float:
        return percentile(self.times_ms, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.times_ms, 0.99)


def scrape(url: str) -> tuple[float, str]:
    """(milliseconds from request to the last byte, body)."""
    begun = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read().decode()
    return 1000 * (time.perf_counter() - begun), body


def series_in(body: str) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith("#"))


def measure_size(
    children: Children, receiver: Receiver | None, args: argparse.Namespace, names: int
) -> SizeResult:
    result = SizeResult(names)
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    service = f"bench-scrape-{names}"
    export = ["--endpoint", receiver.endpoint] if receiver is not None else []
    cli = pinned(
        args.collector_cpu,
        [sys.executable, "-m", "profiler", "run", "--metrics-port", str(port),
         "--max-span-names", str(args.max_span_names), "--no-tree", "--service-name", service,
         *export, "--"],
    )  # fmt: skip
    target = pinned(args.target_cpu, [args.python, str(TARGET), "--names", str(names),
                                      "--rate", str(args.rate)])  # fmt: skip
    outer = children.start(f"scrape-{names}", [*cli, *target])
    try:
        field_value(outer.expect("READY", 60.0), "pid")
        begun = time.monotonic()
        while True:
            try:
                _, body = scrape(url)
                if len(set(NAME.findall(body))) >= names:
                    break
            except OSError:
                pass
            if time.monotonic() - begun > args.ready_timeout:
                raise BenchError(f"not every one of {names} names on /metrics after "
                                 f"{args.ready_timeout:.0f}s")  # fmt: skip
            time.sleep(0.5)
        result.ready_after_s = time.monotonic() - begun
        cli_process = psutil.Process(outer.pid)
        cpu_before, t_before = sum(cli_process.cpu_times()[:2]), time.monotonic()
        for _ in range(args.scrapes):
            elapsed, body = scrape(url)
            result.times_ms.append(elapsed)
            time.sleep(args.gap)
        window = time.monotonic() - t_before
        result.cli_cpu_percent = 100 * (sum(cli_process.cpu_times()[:2]) - cpu_before) / window
        result.series = series_in(body)
        result.body_kb = len(body.encode()) / 1024
        if receiver is not None:
            result.spans_received = receiver.received(service).spans
    except (BenchError, OSError, psutil.Error) as exc:
        result.error = str(exc)
    finally:
        children.stop(outer)
    return result


def render(results: list[SizeResult], args: argparse.Namespace) -> str:
    header = ["span names", "series", "body KB", "p50 ms", "p99 ms", "max ms", "CLI CPU",
              "ready after s"]  # fmt: skip
    rows = [
        [f"{r.names:,}", f"{r.series:,}", f"{r.body_kb:,.0f}", f"{r.p50:.1f}", f"{r.p99:.1f}",
         f"{max(r.times_ms):.1f}",
         "-" if r.cli_cpu_percent is None else f"{r.cli_cpu_percent:.0f}%",
         f"{r.ready_after_s:.1f}"]
        for r in results
        if r.times_ms
    ]  # fmt: skip
    export = "exporting to an OTLP receiver" if not args.no_export else "no export"
    lines = [
        f"/metrics scrape time: {args.scrapes} scrapes {args.gap:g}s apart, the target calling "
        f"its functions at {args.rate:,.0f}/s, {export}",
        *grid(header, rows),
    ]
    lines += [f"!! FAILED {r.names} names: {r.error}" for r in results if r.error]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scrape", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="20 scrapes per size")
    parser.add_argument("--names", default="500,3000", help="sizes, comma-separated")
    parser.add_argument("--scrapes", type=int, help="per size (default 100, --quick 20)")
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between scrapes")
    parser.add_argument("--rate", type=float, default=2000.0, help="target's calls per second")
    parser.add_argument("--max-span-names", type=int, default=5000)
    parser.add_argument("--no-export", action="store_true", help="metrics only, no OTLP export")
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    add_placement_options(parser, "target", "CLI")
    add_run_options(parser)
    args = parser.parse_args(argv)
    args.scrapes = args.scrapes or (20 if args.quick else 100)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [int(n) for n in args.names.split(",") if n.strip()]
    results: list[SizeResult] = []

    def body(children: Children, logs: Path) -> None:
        receiver = None if args.no_export else Receiver.start(children, args.collector_cpu)
        for names in sizes:
            result = measure_size(children, receiver, args, names)
            results.append(result)
            shown = result.error or (
                f"{result.series:,} series, p50 {result.p50:.1f} ms, p99 {result.p99:.1f} ms"
            )
            print(f"[{names} names] {shown}", file=sys.stderr, flush=True)

    stopped = run_children(args, "scrape", body)
    if stopped is not None:
        return stopped
    print()
    print(render(results, args))
    print(f"\n{load_note()}")
    if args.json:
        document = {"sizes": [asdict(r) | {"p50_ms": r.p50, "p99_ms": r.p99} for r in results
                              if r.times_ms or r.error]}  # fmt: skip
        write_json(args.json, vars(args), document)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
