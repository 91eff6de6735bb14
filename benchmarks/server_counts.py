"""What the agent costs the real W2 server per request, in simulated CPU events: instructions,
L1 instruction and data cache misses, branch mispredictions (cachegrind).

    .venv/bin/python -m benchmarks.server_counts          # ~6 minutes; needs valgrind and hey
    .venv/bin/python -m benchmarks.server_counts --modes plain,full
    .venv/bin/python -m benchmarks.server_counts --modes plain,full --functions 30

The W2 target (targets/hello_server.py) runs under `valgrind --tool=cachegrind` on the target
CPU: plainly, or under `async-inspect run` (the CLI on the load CPU) with every trace sampled
(`full`) or none (`none-sampled`, the sampler's ratio 0), or attached with every event
off (`paused`: `--burst`, one 50 ms burst at the start). `hey` sends it N requests over 50
kept-alive connections, then N + 10,000 in a second run; the difference of the two runs'
totals / 10,000 is the cost of one request (start-up, imports and shut-down cancel out).

`--functions N` runs callgrind instead and prints, per request, the N functions whose own
instructions differ most from plain's (callgrind_annotate, exclusive counts): where the
agent's instructions go, in the server as it runs, sender thread included.

Unlike benchmarks.callbacks_cost (the agent's callbacks in one process with a client), this is
the server as benchmarks.overhead measures it, sender thread included, one request per
connection turn. Why cache misses: timings lose several times what instruction counts say,
and this shows where. Cachegrind models this machine's first-level caches (32 KB, 8-way):
the agent's callbacks and the CPython code they call push the interpreter's own code out of
the instruction cache, and the misses that follow are counted where they happen (mostly in
the eval loop), not in the agent's functions.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .procs import pinned

TARGET = Path(__file__).resolve().parent / "targets" / "hello_server.py"
MORE = 10_000
EVENTS = {"instructions": "I   refs", "I1 misses": "I1  misses", "D1 misses": "D1  misses",
          "mispredicts": "Mispredicts"}  # fmt: skip
MODES = {
    "plain": [],
    "full": ["run", "--no-tree"],
    "none-sampled": ["run", "--no-tree", "--sampler", "traceidratio", "--sampler-arg", "0"],
    # Attached with every event off: one 50 ms burst at the start, the next in 500 s.
    "paused": [
        "run",
        "--no-tree",
        "--burst",
        "0.05",
        *("--sampler", "traceidratio"),
        *("--sampler-arg", "0.0001"),
    ],
}


def serve_and_count(
    mode: str, requests: int, target_cpu: int, load_cpu: int, profile: Path | None = None
) -> dict[str, int]:
    """Totals cachegrind counted over a whole run of the server answering `requests`; with
    `profile`, the instructions callgrind counted in each function (written there)."""
    tool = (["--tool=callgrind", f"--callgrind-out-file={profile}"] if profile is not None
            else ["--tool=cachegrind", "--cache-sim=yes", "--branch-sim=yes",
                  "--cachegrind-out-file=/dev/null"])  # fmt: skip
    argv = pinned(target_cpu, ["valgrind", *tool, sys.executable, str(TARGET)])
    if MODES[mode]:
        argv = pinned(load_cpu, [sys.executable, "-m", "profiler", *MODES[mode], "--", *argv])
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        while line and "READY" not in line:
            line = server.stdout.readline()
        found = re.search(r"pid=(\d+) port=(\d+)", line)
        if found is None:
            errors = server.stderr.read() if server.stderr is not None else ""
            raise SystemExit(f"[{mode}] the server did not start: {errors[-2000:]}")
        pid, port = int(found.group(1)), found.group(2)
        load = pinned(
            load_cpu, ["hey", "-n", str(requests), "-c", "50", f"http://127.0.0.1:{port}/"]
        )
        report = subprocess.run(load, capture_output=True, text=True, timeout=1800).stdout
        if f"[200]\t{requests} responses" not in report:
            raise SystemExit(f"[{mode}] not every request got a 200:\n{report[-1500:]}")
        subprocess.run(["kill", "-INT", str(pid)], check=True)
        _, errors = server.communicate(timeout=300)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGKILL)
            server.wait()
    if profile is not None:
        return function_counts(profile)
    counts = {}
    for name, label in EVENTS.items():
        found = re.search(re.escape(label) + r":\s+([\d,]+)", errors)
        if found is None:
            raise SystemExit(f"[{mode}] no cachegrind summary:\n{errors[-2000:]}")
        counts[name] = int(found.group(1).replace(",", ""))
    return counts


def function_counts(profile: Path) -> dict[str, int]:
    """Instructions per function (its own, not its callees'), by `file:function`."""
    report = subprocess.run(
        ["callgrind_annotate", "--auto=no", "--inclusive=no", "--threshold=100", str(profile)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    counts: dict[str, int] = {}
    for line in report.splitlines():
        found = re.match(r"\s*([\d,]+) \([\s\d.]+%\)\s+(\S+)", line)
        if found is None or "PROGRAM" in line or "events annotated" in line:
            continue
        where = found.group(2)
        name = f"{Path(where.split(':', 1)[0]).name}:{where.split(':', 1)[-1]}"
        counts[name] = counts.get(name, 0) + int(found.group(1).replace(",", ""))
    return counts


def print_functions(per_request: dict[str, dict[str, float]], top: int) -> None:
    """The `top` functions whose instructions per request differ most from plain's."""
    plain = per_request["plain"]
    for mode, counts in per_request.items():
        if mode == "plain":
            continue
        print(f"\n{mode}: instructions per request, by function, against plain "
              f"(total {sum(counts.values()):,.0f} vs {sum(plain.values()):,.0f})")  # fmt: skip
        names = set(counts) | set(plain)
        ranked = sorted(names, key=lambda n: -abs(counts.get(n, 0) - plain.get(n, 0)))
        for name in ranked[:top]:
            mine, theirs = counts.get(name, 0.0), plain.get(name, 0.0)
            print(f"{mine - theirs:>+10,.0f} {theirs:>10,.0f} {mine:>10,.0f}  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server_counts",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--modes", default=",".join(MODES), help=f"among {', '.join(MODES)}")
    parser.add_argument("--requests", type=int, default=2000, help="N of the first run (2000)")
    parser.add_argument("--target-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--functions", type=int, default=0, metavar="N",
                        help="callgrind: the N functions that differ most from plain")  # fmt: skip
    args = parser.parse_args(argv)
    for tool, package in (("valgrind", "valgrind"), ("hey", "hey")):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install -y {package}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes {sorted(unknown)}: known are {', '.join(MODES)}")
    if args.functions and modes[0] != "plain":
        raise SystemExit("--functions compares with plain: start --modes with plain")
    started = time.monotonic()
    per_request: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="server-counts-") as scratch:
        for mode in modes:
            runs = [
                serve_and_count(mode, n, args.target_cpu, args.load_cpu,
                                Path(scratch, f"{mode}-{n}.out") if args.functions else None)
                for n in (args.requests, args.requests + MORE)
            ]  # fmt: skip
            names = set(runs[0]) | set(runs[1])
            per_request[mode] = {
                name: (runs[1].get(name, 0) - runs[0].get(name, 0)) / MORE for name in names
            }
            if not args.functions:
                print(f"[{mode}] {per_request[mode]}", file=sys.stderr)
    if args.functions:
        print(f"W2 server under callgrind ({MORE:,} requests; "
              f"{time.monotonic() - started:.0f}s)")  # fmt: skip
        print_functions(per_request, args.functions)
        return 0
    plain = per_request.get("plain")
    print(f"W2 server, per request, under cachegrind ({MORE:,} requests; "
          f"{time.monotonic() - started:.0f}s)")  # fmt: skip
    print(f"{'mode':<14}" + "".join(f"{name:>22}" for name in EVENTS))
    for mode, counts in per_request.items():
        cells = []
        for name in EVENTS:
            versus = (
                f" ({counts[name] / plain[name] - 1:+.1%})" if plain and mode != "plain" else ""
            )
            cells.append(f"{counts[name]:,.0f}{versus}")
        print(f"{mode:<14}" + "".join(f"{cell:>22}" for cell in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
