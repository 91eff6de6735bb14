"""Many span names: an app that keeps calling `--names` distinct coroutine functions.

Standard library only. The functions (`f_00000` ... ) are generated into a module file in a
temporary folder (application code, so each is traced and has its own span name), imported,
and called round-robin at `--rate` calls per second: every 10 ms a loop callback starts one
root task `call_some` that awaits the functions due. Prints `READY pid=<pid>` (flushed) once
running; exits on SIGTERM.

Usage: many_names.py [--names N] [--rate R]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from itertools import cycle

TICK = 0.01
Func = Callable[[], Awaitable[int]]


def generate(names: int, folder: str) -> list[Func]:
    module = f"bench_names_{names}"
    with open(os.path.join(folder, module + ".py"), "w") as source:
        for i in range(names):
            source.write(f"async def f_{i:05d}():\n    return {i}\n\n")
    sys.path.insert(0, folder)
    generated = importlib.import_module(module)
    return [getattr(generated, f"f_{i:05d}") for i in range(names)]


async def call_some(funcs: list[Func]) -> None:
    for func in funcs:
        await func()


RUNNING: set[asyncio.Future[None]] = set()


def due(loop: asyncio.AbstractEventLoop, order: cycle[Func], rate: float, owed: float) -> None:
    owed += rate * TICK
    batch = [next(order) for _ in range(int(owed))]
    owed -= len(batch)
    if batch:
        task = asyncio.ensure_future(call_some(batch))  # a root: started outside any coroutine
        RUNNING.add(task)
        task.add_done_callback(RUNNING.discard)
    loop.call_later(TICK, due, loop, order, rate, owed)


async def main(names: int, rate: float) -> None:
    folder = tempfile.mkdtemp(prefix="bench-names-")
    try:
        funcs = generate(names, folder)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.call_soon(due, loop, cycle(funcs), rate, 0.0)
        print(f"READY pid={os.getpid()}", flush=True)
        await stop.wait()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--names", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=2000.0, help="calls per second")
    args = parser.parse_args()
    asyncio.run(main(args.names, args.rate))
