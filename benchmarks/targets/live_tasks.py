"""Memory per live task: N asyncio tasks, each blocked on one Event, measured from inside.

Standard library only. Protocol on stdout (flushed):

    READY pid=<pid>                  waiting for "go" on stdin (an agent may attach meanwhile)
    TOP <bytes> <count> <file>:<line>    with --tracemalloc: the 12 sites that grew most
    RESULT tasks=<n> traced_bytes=<b> rss_bytes=<b>

After "go" it settles, starts tracemalloc (with --tracemalloc), creates the tasks from a loop
callback (each a root, as a server's requests are), lets every task reach its Event and the
agent's sender run, then reports what the Python heap (tracemalloc) and the resident set grew
by. It then releases the tasks and exits.

Usage: live_tasks.py [--tasks N] [--settle S] [--tracemalloc]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import threading
import tracemalloc

PAGE = os.sysconf("SC_PAGE_SIZE")


async def hold(event: asyncio.Event) -> None:
    await event.wait()


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def spawn(n: int, event: asyncio.Event, spawned: asyncio.Future[list[asyncio.Task[None]]]) -> None:
    spawned.set_result([asyncio.create_task(hold(event)) for _ in range(n)])


def heap() -> int:
    return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0


async def main(tasks: int, settle: float, trace: bool) -> None:
    loop = asyncio.get_running_loop()
    go = asyncio.Event()

    def wait_for_go() -> None:
        sys.stdin.readline()
        loop.call_soon_threadsafe(go.set)

    threading.Thread(target=wait_for_go, daemon=True).start()
    print(f"READY pid={os.getpid()}", flush=True)
    await go.wait()
    await asyncio.sleep(settle)
    gc.collect()
    if trace:
        tracemalloc.start()
        first = tracemalloc.take_snapshot()
    heap_before, rss_before = heap(), rss()
    event = asyncio.Event()
    spawned: asyncio.Future[list[asyncio.Task[None]]] = loop.create_future()
    loop.call_soon(spawn, tasks, event, spawned)
    held = await spawned
    await asyncio.sleep(settle)  # every task blocked; the agent's sender has run
    gc.collect()
    heap_after, rss_after = heap(), rss()
    if trace:
        for stat in tracemalloc.take_snapshot().compare_to(first, "lineno")[:12]:
            where = stat.traceback[0]
            print(f"TOP {stat.size_diff} {stat.count_diff} {where.filename}:{where.lineno}")
    print(
        f"RESULT tasks={len(held)} traced_bytes={heap_after - heap_before} "
        f"rss_bytes={rss_after - rss_before}",
        flush=True,
    )
    tracemalloc.stop()
    event.set()
    await asyncio.gather(*held)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--tracemalloc", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.tasks, args.settle, args.tracemalloc))
