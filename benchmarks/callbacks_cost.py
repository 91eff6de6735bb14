"""The agent's callbacks, counted exactly: CPU instructions per W2 request under callgrind.

    .venv/bin/python -m benchmarks.callbacks_cost                 # ~6 minutes, needs valgrind

Timings on a shared machine swing by tens of percent; instruction counts do not. In one
process, an aiohttp hello-world server and a client on one kept-alive connection exchange
requests; the agent's tracker is installed the way the agent installs it (tool id, events,
task factory, wake hook), but nothing is shipped or exported: this isolates what the
sys.monitoring callbacks and their bookkeeping cost per request. Each mode runs twice under
`valgrind --tool=callgrind` (1 and 1 + N requests per round, 3 rounds) and the difference /
(3 N) is the cost of one request (start-up, imports and teardown cancel out).

    baseline    no agent
    compiled    the compiled callbacks, every trace sampled / `compiled-0`: none sampled
    python      the pure-Python callbacks, every trace sampled / `python-0`: none sampled

The client's own coroutine is application code too, so a request here has a few more spans
than a request in benchmarks.overhead's W2.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import time

MODES = ("baseline", "compiled", "compiled-0", "python", "python-0")
ROUNDS = 3


def install(mode: str) -> None:
    """Start observing this process as the agent would, minus the sender."""
    if mode == "baseline":
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


async def hello(request: object) -> object:
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


def instructions(mode: str, requests: int) -> int:
    """Instructions callgrind counted for a whole `--serve` run."""
    argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
            "-m", "benchmarks.callbacks_cost", "--serve", mode, str(requests)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"{mode}: callgrind run failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.callbacks_cost",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--requests", type=int, default=1000, help="N per round (1000)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"among {', '.join(MODES)}")
    parser.add_argument("--serve", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        install(args.serve[0])
        asyncio.run(exchange(int(args.serve[1])))
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is missing: apt-get install -y valgrind")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    started = time.monotonic()
    per_request: dict[str, int] = {}
    for mode in modes:
        extra = instructions(mode, 1 + args.requests) - instructions(mode, 1)
        per_request[mode] = extra // (ROUNDS * args.requests)
        print(f"[{mode}] {per_request[mode]:,} instructions/request", file=sys.stderr)
    base = per_request.get("baseline")
    print(f"instructions per W2 request, in-process, under callgrind ({args.requests} x "
          f"{ROUNDS} requests; {time.monotonic() - started:.0f}s)")  # fmt: skip
    print(f"{'mode':<12}{'instructions':>14}{'vs baseline':>14}")
    for mode, count in per_request.items():
        versus = f"{count / base - 1:+.1%}" if base else "-"
        print(f"{mode:<12}{count:>14,}{versus:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
