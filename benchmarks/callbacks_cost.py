"""The agent's callbacks, counted exactly: CPU instructions per W2 request (or W1 chain)
under callgrind.

    .venv/bin/python -m benchmarks.callbacks_cost                 # W2, ~8 minutes, needs valgrind
    .venv/bin/python -m benchmarks.callbacks_cost --workload W1   # W1, ~7 minutes

Timings on a shared machine swing by tens of percent; instruction counts do not. In one
process, an aiohttp hello-world server and a client on one kept-alive connection exchange
requests (W2), or 100 tasks each await `top() -> middle() -> leaf() -> sleep(0)` (W1, as
targets/chains.py); the agent's tracker is installed the way the agent installs it (tool id,
events, task factory, wake hook), but nothing is shipped or exported: this isolates what the
sys.monitoring callbacks and their bookkeeping cost per request. Each mode runs twice under
`valgrind --tool=callgrind` (1 and 1 + N requests per round, 3 rounds; W1: 1 and 1 + N chains
per task) and the difference / (3 N), W1 / (100 N), is the cost of one request or chain
(start-up, imports and teardown cancel out).

    baseline    no agent
    compiled    the compiled callbacks, every trace sampled / `compiled-0`: none sampled
    python      the pure-Python callbacks, every trace sampled / `python-0`: none sampled
    noop        no agent: the agent's events with Python callbacks that do nothing
                (targets/noop_tracer.py) / `noop-steps`: its --steps design

The client's own coroutine is application code too, so a request here has a few more spans
than a request in benchmarks.overhead's W2. Nothing drains the agent's buffer here, so every
span of the run stays in it, and the cyclic GC's full passes over the buffer are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODES = ("baseline", "compiled", "compiled-0", "python", "python-0", "noop", "noop-steps")
ROUNDS = 3
W1_TASKS = 100
TARGETS = Path(__file__).resolve().parent / "targets"


def target_module(name: str) -> Any:
    """A module of targets/ (they are scripts, not a package), imported."""
    if str(TARGETS) not in sys.path:
        sys.path.insert(0, str(TARGETS))
    return importlib.import_module(name)


def install(mode: str) -> None:
    """Start observing this process as the agent would, minus the sender."""
    if mode == "baseline":
        return
    if mode.startswith("noop"):
        target_module("noop_tracer").install(steps=mode == "noop-steps")
        return
    from profiler.agent.accelerator import AcceleratedTracker, new_tracker
    from profiler.agent.codefilter import CodeFilter
    from profiler.agent.monitoring import Installation, claim_tool_id
    from profiler.agent.settings import AgentSettings
    from profiler.agent.tasks import LoopWatcher
    from profiler.agent.tracker import Tracker

    ratio = 0.0 if mode.endswith("-0") else 1.0
    settings = AgentSettings(sample_ratio=ratio, buffer_size=10**7)
    tool = claim_tool_id("async-inspect-bench")
    if mode.startswith("compiled"):
        tracker, why = new_tracker(settings, CodeFilter(settings), tool)
        if not isinstance(tracker, AcceleratedTracker):
            raise SystemExit(f"no compiled callbacks here: {why}")
    else:
        tracker = Tracker(settings, CodeFilter(settings), tool)
    tracker.on_new_loop = LoopWatcher(tracker).ensure
    Installation(tool, tracker).install()
    tracker.watch_selector_wakeups()


async def hello(request: Any) -> Any:
    from aiohttp import web

    return web.Response(text="Hello")


async def exchange(requests: int) -> None:
    from aiohttp import web

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    for _ in range(ROUNDS):
        for _ in range(requests):
            writer.write(request)
            await reader.readuntil(b"Hello")
    writer.close()
    await runner.cleanup()


async def chains(per_task: int) -> None:
    """W1: W1_TASKS tasks, each awaiting targets/chains.py's three-deep chain `per_task`
    times."""
    top = target_module("chains").top

    async def worker() -> None:
        for _ in range(per_task):
            await top()

    loop = asyncio.get_running_loop()
    spawned: asyncio.Future[list[asyncio.Task[None]]] = loop.create_future()
    # From a loop callback, as in targets/chains.py: each worker is a root of its own.
    loop.call_soon(
        lambda: spawned.set_result([loop.create_task(worker()) for _ in range(W1_TASKS)])
    )
    await asyncio.gather(*await spawned)


def instructions(mode: str, workload: str, count: int) -> int:
    """Instructions callgrind counted for a whole `--serve` run."""
    argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
            "-m", "benchmarks.callbacks_cost", "--workload", workload,
            "--serve", mode, str(count)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"{mode}: callgrind run failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.callbacks_cost",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--requests", type=int, default=1000, help="N per round (1000)")
    parser.add_argument("--workload", choices=("W1", "W2"), default="W2")
    parser.add_argument("--modes", default=",".join(MODES), help=f"among {', '.join(MODES)}")
    parser.add_argument("--serve", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        install(args.serve[0])
        work = chains if args.workload == "W1" else exchange
        asyncio.run(work(int(args.serve[1])))
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is missing: apt-get install -y valgrind")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    started = time.monotonic()
    per_unit: dict[str, int] = {}
    unit, units = ("chain", W1_TASKS) if args.workload == "W1" else ("request", ROUNDS)
    for mode in modes:
        runs = [instructions(mode, args.workload, n) for n in (1 + args.requests, 1)]
        per_unit[mode] = (runs[0] - runs[1]) // (units * args.requests)
        print(f"[{mode}] {per_unit[mode]:,} instructions/{unit}", file=sys.stderr)
    base = per_unit.get("baseline")
    print(f"instructions per {args.workload} {unit}, in-process, under callgrind "
          f"({args.requests} x {units} {unit}s; {time.monotonic() - started:.0f}s)")  # fmt: skip
    print(f"{'mode':<12}{'instructions':>14}{'vs baseline':>14}")
    for mode, count in per_unit.items():
        versus = f"{count / base - 1:+.1%}" if base else "-"
        print(f"{mode:<12}{count:>14,}{versus:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
