"""What the agent costs the real W2 server per request, in simulated CPU events: instructions,
L1 instruction and data cache misses, branch mispredictions (cachegrind).

    .venv/bin/python -m benchmarks.server_counts          # ~6 minutes; needs valgrind and hey
    .venv/bin/python -m benchmarks.server_counts --modes plain,full

The W2 target (targets/hello_server.py) runs under `valgrind --tool=cachegrind` on the target
CPU: plainly, or under `async-inspect run` (the CLI on the load CPU) with every trace sampled
(`full`) or none (`none-sampled`, the sampler's ratio 0), or attached with every event
off (`paused`: `--burst`, one 50 ms burst at the start). `hey` sends it N requests over 50
kept-alive connections, then N + 10,000 in a second run; the difference of the two runs'
totals / 10,000 is the cost of one request (start-up, imports and shut-down cancel out).

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


def serve_and_count(mode: str, requests: int, target_cpu: int, load_cpu: int) -> dict[str, int]:
    """Totals cachegrind counted over a whole run of the server answering `requests`."""
    with_valgrind = ["valgrind", "--tool=cachegrind", "--cache-sim=yes", "--branch-sim=yes",
                     "--cachegrind-out-file=/dev/null", sys.executable, str(TARGET)]  # fmt: skip
    argv = pinned(target_cpu, with_valgrind)
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
    counts = {}
    for name, label in EVENTS.items():
        found = re.search(re.escape(label) + r":\s+([\d,]+)", errors)
        if found is None:
            raise SystemExit(f"[{mode}] no cachegrind summary:\n{errors[-2000:]}")
        counts[name] = int(found.group(1).replace(",", ""))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server_counts",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--modes", default=",".join(MODES), help=f"among {', '.join(MODES)}")
    parser.add_argument("--requests", type=int, default=2000, help="N of the first run (2000)")
    parser.add_argument("--target-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    args = parser.parse_args(argv)
    for tool, package in (("valgrind", "valgrind"), ("hey", "hey")):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install -y {package}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes {sorted(unknown)}: known are {', '.join(MODES)}")
    started = time.monotonic()
    per_request: dict[str, dict[str, float]] = {}
    for mode in modes:
        runs = [serve_and_count(mode, n, args.target_cpu, args.load_cpu)
                for n in (args.requests, args.requests + MORE)]  # fmt: skip
        per_request[mode] = {name: (runs[1][name] - runs[0][name]) / MORE for name in EVENTS}
        print(f"[{mode}] {per_request[mode]}", file=sys.stderr)
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
