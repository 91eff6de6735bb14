"""W1, the worst case: many tasks awaiting a three-deep coroutine chain ending in sleep(0).

Plain asyncio, standard library only: it must run unchanged under `python` and under
`async-inspect run`. Protocol on stdout (one line each, flushed):

    READY pid=<pid>                       workload running, waiting for "go" on stdin
    START                                 warm-up over, counting
    RESULT chains_per_s=<x> chains=<n> seconds=<t>

Usage: chains.py [--tasks N] [--warmup S] [--duration S]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time

chains_done = 0
running = True


async def leaf() -> None:
    await asyncio.sleep(0)


async def middle() -> None:
    await leaf()


async def top() -> None:
    await middle()


async def worker() -> None:
    global chains_done
    while running:
        await top()
        chains_done += 1


def wait_for_go(loop: asyncio.AbstractEventLoop, go: asyncio.Event) -> None:
    # A thread, so the loop (and any agent attached to it) keeps running meanwhile.
    sys.stdin.readline()
    loop.call_soon_threadsafe(go.set)


def spawn(tasks: int, spawned: asyncio.Future[list[asyncio.Task[None]]]) -> None:
    # Created from a loop callback, outside any coroutine, each worker is a root: its own
    # trace, like the requests of a server, so trace sampling picks workers independently.
    spawned.set_result([asyncio.create_task(worker()) for _ in range(tasks)])


async def main(tasks: int, warmup: float, duration: float) -> None:
    global running
    loop = asyncio.get_running_loop()
    spawned: asyncio.Future[list[asyncio.Task[None]]] = loop.create_future()
    loop.call_soon(spawn, tasks, spawned)
    workers = await spawned
    go = asyncio.Event()
    threading.Thread(target=wait_for_go, args=(loop, go), daemon=True).start()
    print(f"READY pid={os.getpid()}", flush=True)
    await go.wait()
    await asyncio.sleep(warmup)
    start_count, start = chains_done, time.perf_counter()
    print("START", flush=True)
    await asyncio.sleep(duration)
    count, elapsed = chains_done - start_count, time.perf_counter() - start
    print(
        f"RESULT chains_per_s={count / elapsed:.1f} chains={count} seconds={elapsed:.3f}",
        flush=True,
    )
    running = False
    await asyncio.gather(*workers)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args()
    asyncio.run(main(args.tasks, args.warmup, args.duration))
