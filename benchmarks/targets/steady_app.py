"""A small asyncio service that handles a steady stream of requests by itself.

Standard library only. Every 10 ms a loop callback starts the requests due (`--rate` per
second), each a root task `handle_request -> auth_user, fetch_data -> db_query` (4 spans)
with short sleeps, as the spec's example service. Prints `READY pid=<pid>` (flushed); exits
on SIGTERM. For the node daemon's benchmarks (memory.py, daemon_scaling.py), which attach
to it because it runs with ASYNC_INSPECT_ENABLE=1.

Usage: steady_app.py [--rate R]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

TICK = 0.01


async def auth_user() -> None:
    await asyncio.sleep(0.001)


async def db_query() -> None:
    await asyncio.sleep(0.002)


async def fetch_data() -> None:
    await db_query()


async def handle_request() -> None:
    await auth_user()
    await fetch_data()


def due(loop: asyncio.AbstractEventLoop, rate: float, owed: float, running: set[object]) -> None:
    # From a callback, outside any coroutine: each request is a root span, its own trace.
    owed += rate * TICK
    while owed >= 1:
        task = asyncio.ensure_future(handle_request())
        running.add(task)
        task.add_done_callback(running.discard)
        owed -= 1
    loop.call_later(TICK, due, loop, rate, owed, running)


async def main(rate: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.call_soon(due, loop, rate, 0.0, set())
    print(f"READY pid={os.getpid()}", flush=True)
    await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=3.0, help="requests per second")
    asyncio.run(main(parser.parse_args().rate))
