"""Overhead of async-inspect on asyncio apps: throughput ratios to a plain-python baseline.

    .venv/bin/python -m benchmarks.overhead [--quick] [--rounds N] [--json FILE]

Every round runs each mode once per workload, side by side with a plain baseline: both
targets pinned to the target CPU, both loaded at the same time (each by its own wrk), so
whatever else the machine does slows both alike, and each ratio compares the two. wrk, the
async-inspect CLI, the OTLP receiver and W3's backend run on the other CPU. With
--one-at-a-time, each target runs alone and a mode is compared with the baseline of its
round. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from .environment import load_note, write_json
from .floor import build_floor_tree
from .harness import add_run_options, run_children
from .modes import MODES, ModeContext
from .procs import Children
from .receiver import Receiver
from .runner import Sample, measure_once, measure_pair
from .summary import BASELINE, ModeSummary, summarize
from .table import render
from .workloads import Chains, Http, Service, Workload

DEFAULT_MODES = ("baseline", "run-full", "run-10pct", "run-1pct", "run-burst-10pct",
                 "run-burst-1pct", "run-noexport", "attached", "after-detach", "peer-otel",
                 "busy-neighbour", "noop-tracer", "floor", "records")  # fmt: skip
# busy-neighbour is the control of one-at-a-time runs, where the CLI's load on the other CPU
# reaches only the target under test; side by side it reaches both targets alike.
ONE_AT_A_TIME_ONLY = ("busy-neighbour",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.overhead", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="2 short rounds (~7 minutes)")
    parser.add_argument("--rounds", type=int, help="rounds (default 5, --quick 2)")
    parser.add_argument("--workloads", default="W1,W2,W3", help="comma-separated (W1,W2,W3)")
    parser.add_argument(
        "--modes",
        help="comma-separated, baseline always runs (default: "
        f"{','.join(DEFAULT_MODES)}, without {','.join(ONE_AT_A_TIME_ONLY)} side by side; "
        f"known: {', '.join(MODES)})",
    )
    parser.add_argument(
        "--against",
        type=Path,
        metavar="TREE",
        help="side by side, compare each mode with the same mode run from another "
        "async-inspect work tree (its agent built there) instead of plain python",
    )
    parser.add_argument(
        "--one-at-a-time",
        action="store_true",
        help="each target alone on its CPU, compared with the baseline of its round "
        "(default: side by side with a plain baseline, loaded at the same time)",
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter of the targets")
    parser.add_argument("--target-cpu", type=int, default=0, help="CPU of the target (0)")
    parser.add_argument("--load-cpu", type=int, default=1, help="CPU of wrk and the harness (1)")
    parser.add_argument(
        "--collector-cpu",
        type=int,
        help="CPU of the async-inspect CLI and the OTLP receiver (default: the load CPU; "
        "-1: not pinned)",
    )
    parser.add_argument("--w1-tasks", type=int, default=100)
    parser.add_argument("--w1-warmup", type=float, help="seconds (default 1, --quick 0.5)")
    parser.add_argument("--w1-duration", type=float, help="seconds (default 3, --quick 1.5)")
    parser.add_argument("--w2-connections", type=int, default=50)
    parser.add_argument("--w2-warmup", type=float, help="seconds (default 2, --quick 1)")
    parser.add_argument("--w2-duration", type=float, help="seconds (default 5, --quick 2)")
    parser.add_argument("--w3-connections", type=int, default=50)
    parser.add_argument("--w3-items", type=int, default=50, help="line items per order (50)")
    parser.add_argument("--w3-warmup", type=float, help="seconds (default 2, --quick 1)")
    parser.add_argument("--w3-duration", type=float, help="seconds (default 5, --quick 2)")
    add_run_options(parser)
    return parser.parse_args(argv)


def pick(value: float | None, quick: bool, quick_default: float, default: float) -> float:
    """An explicit value, else the --quick or the normal default."""
    if value is not None:
        return value
    return quick_default if quick else default


def build_workloads(args: argparse.Namespace) -> list[Workload]:
    wanted = [name.strip().upper() for name in args.workloads.split(",") if name.strip()]
    workloads: dict[str, Workload] = {
        "W1": Chains(
            args.w1_tasks,
            pick(args.w1_warmup, args.quick, 0.5, 1.0),
            pick(args.w1_duration, args.quick, 1.5, 3.0),
        ),
        "W2": Http(
            args.w2_connections,
            pick(args.w2_warmup, args.quick, 1.0, 2.0),
            pick(args.w2_duration, args.quick, 2.0, 5.0),
            args.load_cpu,
        ),
        "W3": Service(
            args.w3_connections,
            pick(args.w3_warmup, args.quick, 1.0, 2.0),
            pick(args.w3_duration, args.quick, 2.0, 5.0),
            args.load_cpu,
            args.w3_items,
        ),
    }
    unknown = [name for name in wanted if name not in workloads]
    if unknown:
        raise SystemExit(f"unknown workload(s): {', '.join(unknown)} (known: W1, W2, W3)")
    return [workloads[name] for name in wanted]


def build_modes(args: argparse.Namespace) -> list[str]:
    if args.modes is None:
        skip = () if args.one_at_a_time else ONE_AT_A_TIME_ONLY
        wanted = [name for name in DEFAULT_MODES if name not in skip]
    else:
        wanted = [name.strip() for name in args.modes.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode(s): {', '.join(unknown)} (known: {', '.join(MODES)})")
    return [BASELINE, *(name for name in wanted if name != BASELINE)]


def collector_cpu(args: argparse.Namespace) -> int | None:
    """Where the CLI and the receiver run: --collector-cpu, else the load CPU; -1: anywhere."""
    if args.collector_cpu is None:
        return int(args.load_cpu)
    return None if args.collector_cpu < 0 else int(args.collector_cpu)


def preflight(args: argparse.Namespace, workloads: list[Workload], modes: list[str]) -> None:
    """Refuse to start what cannot work: missing tools, CPUs we do not have."""
    cpus = os.sched_getaffinity(0)
    for cpu in (args.target_cpu, args.load_cpu, collector_cpu(args)):
        if cpu is not None and cpu not in cpus:
            raise SystemExit(f"CPU {cpu} is not available here (have {sorted(cpus)})")
    if args.against is not None:
        if args.one_at_a_time:
            raise SystemExit("--against compares side by side: drop --one-at-a-time")
        if not (args.against / "profiler" / "__init__.py").is_file():
            raise SystemExit(f"--against {args.against}: not an async-inspect work tree")
        if any(MODES[mode].build_macro for mode in modes):
            raise SystemExit("--against: the floor and records builds are measured against "
                             "plain python; leave those modes out (--modes)")  # fmt: skip
    if args.target_cpu == args.load_cpu:
        print("warning: target and load share one CPU; ratios will be noisy", file=sys.stderr)
    if shutil.which("taskset") is None:
        raise SystemExit("taskset is missing: apt-get install -y util-linux")
    if any(isinstance(w, Http) for w in workloads) and shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    if any(m in modes for m in ("attached", "after-detach")) and shutil.which("gdb") is None:
        print("warning: gdb is missing; attach to a 3.12/3.13 target will fail", file=sys.stderr)


def progress(sample: Sample, rounds: int) -> None:
    """One line per measurement on stderr, so a long run shows it is alive."""
    mode = f"{sample.mode} (beside)" if sample.reference else sample.mode
    head = f"[round {sample.round}/{rounds} {sample.workload} {mode:<12}]"
    if not sample.ok:
        print(f"{head} FAILED: {sample.error}", file=sys.stderr, flush=True)
        return
    metrics = "  ".join(f"{k}={v:,.2f}" for k, v in sample.metrics.items() if k != "errors")
    spans = sample.received.spans if sample.received is not None else 0
    cpu = sample.window.collector_cpu_s if sample.window is not None else None
    cli = f"  CLI {cpu:.2f}s" if cpu is not None else ""
    print(
        f"{head} {metrics}  spans={spans:,}{cli}  ({sample.wall_s:.1f}s)",
        file=sys.stderr,
        flush=True,
    )
    for warning in sample.warnings:
        print(f"{head} warning: {warning}", file=sys.stderr, flush=True)


def modes_for(workload: Workload, modes: list[str]) -> list[str]:
    """The modes that apply to `workload` (peer-otel: the aiohttp ones), in order."""
    return [mode for mode in modes if MODES[mode].applies_to(workload.name)]


def run_rounds(
    args: argparse.Namespace,
    workloads: list[Workload],
    modes: list[str],
    rounds: int,
    children: Children,
) -> list[Sample]:
    """Interleaved A/B: every round runs each workload in every mode (side by side with a
    plain baseline, or one at a time with the baseline first)."""
    receiver = Receiver.start(children, collector_cpu(args))
    print(f"OTLP receiver at {receiver.endpoint}", file=sys.stderr, flush=True)
    for workload in workloads:
        workload.prepare(children)
    samples: list[Sample] = []

    def context(workload: Workload, service: str, round_no: int) -> ModeContext:
        return ModeContext(
            python=args.python,
            endpoint=receiver.endpoint,
            service=f"bench-{workload.name}-{service}-r{round_no}",
            target_cpu=args.target_cpu,
            collector_cpu=collector_cpu(args),
            load_cpu=args.load_cpu,
            children=children,
            receiver=receiver,
            round=round_no,
        )

    with tempfile.TemporaryDirectory(prefix="async-inspect-floor-") as scratch:
        builds: dict[str, str] = {}
        for name in sorted({m for mode in modes if (m := MODES[mode].build_macro)}):
            print(f"building the agent with {name}", file=sys.stderr, flush=True)
            builds[name] = str(build_floor_tree(Path(scratch) / name, name))
        for round_no in range(1, rounds + 1):
            for workload in workloads:
                for mode in modes_for(workload, modes):
                    measured = context(workload, mode, round_no)
                    if (macro := MODES[mode].build_macro) is not None:
                        measured = replace(measured, build=builds[macro])
                    if args.one_at_a_time:
                        pair: tuple[Sample, ...] = (
                            measure_once(workload, MODES[mode], measured, receiver, round_no),
                        )
                    else:
                        reference = context(workload, f"{mode}-ref", round_no)
                        if args.against is not None and mode != BASELINE:
                            reference = replace(reference, build=str(args.against))
                        kinds = (MODES[mode if reference.build else BASELINE], MODES[mode])
                        pair = measure_pair(workload, kinds, (reference, measured), receiver,
                                            round_no, len(samples) + 1)  # fmt: skip
                    for sample in pair:
                        progress(sample, rounds)
                    samples.extend(pair)
    return samples


def report(
    workloads: list[Workload], modes: list[str], samples: list[Sample], rounds: int
) -> dict[str, list[ModeSummary]]:
    """Print one table per workload; return the summaries."""
    summaries = {}
    for workload in workloads:
        mine = modes_for(workload, modes)
        summaries[workload.name] = summarize(samples, workload.name, workload.metrics, mine)
        print()
        print(render(workload.title, rounds, summaries[workload.name], workload.metrics))
    return summaries


def write_results(
    path: Path,
    args: argparse.Namespace,
    summaries: dict[str, list[ModeSummary]],
    samples: list[Sample],
) -> None:
    document = {
        "summary": {name: [asdict(s) for s in rows] for name, rows in summaries.items()},
        "samples": [asdict(s) for s in samples],
    }
    write_json(path, vars(args), document)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workloads = build_workloads(args)
    modes = build_modes(args)
    rounds = args.rounds or (2 if args.quick else 5)
    preflight(args, workloads, modes)
    # The harness only reads pipes, but keep it off the target's CPU all the same.
    os.sched_setaffinity(0, {args.load_cpu})
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # the harness; children: by session
    started = time.monotonic()
    where = collector_cpu(args)
    samples: list[Sample] = []

    def body(children: Children, logs: Path) -> None:
        samples.extend(run_rounds(args, workloads, modes, rounds, children))

    how = (
        "one at a time"
        if args.one_at_a_time
        else f"side by side with the build in {args.against}"
        if args.against is not None
        else "side by side with a plain baseline"
    )
    banner = (
        f"{rounds} rounds x {len(workloads)} workloads x {len(modes)} modes, {how}; target on CPU "
        f"{args.target_cpu}, wrk on CPU {args.load_cpu}, CLI and receiver on "
        f"{'any CPU' if where is None else f'CPU {where}'}\n"
    )
    stopped = run_children(args, "bench", body, banner)
    if stopped is not None:
        return stopped
    summaries = report(workloads, modes, samples, rounds)
    print(f"\n{len(samples)} target runs in {time.monotonic() - started:.0f}s; {load_note()}")
    if args.json:
        write_results(args.json, args, summaries, samples)
    failed = sum(not s.ok for s in samples)
    if failed:
        print(f"\n!! {failed} of {len(samples)} measurements FAILED (see above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
