"""Target for burst tests: a steady stream of short request traces (request -> step) for
SECONDS, plus one long task (`watchman`) that outlives every burst. Every 5 ms it notes
whether the async-inspect tool has any event on, and at the end prints those intervals
(`on START END`, perf_counter_ns), the requests it started, and `clock` (time_ns minus
perf_counter_ns, to place the spans' wall-clock times on that clock). It prints `ready`
first, for a test that attaches."""

import asyncio
import sys
import time

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
_mon = sys.monitoring


def events_on() -> bool:
    for tool in range(6):
        if _mon.get_tool(tool) == "async-inspect":
            return _mon.get_events(tool) != 0
    return False


async def step(i):
    await asyncio.sleep(0)
    return i


async def request(i):
    await step(i)
    await asyncio.sleep(0.001)


async def watchman(stop):
    while not stop.is_set():
        await asyncio.sleep(0.05)


async def main():
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    guard = asyncio.ensure_future(watchman(stop))
    print("ready", flush=True)
    intervals, since, requests = [], None, 0
    end = time.perf_counter() + SECONDS
    # After the requests, the watchman's last step may come up to 50 ms later: still watched.
    while not guard.done():
        if time.perf_counter() < end:
            loop.call_soon(lambda i=requests: asyncio.ensure_future(request(i)))
            requests += 1
        else:
            stop.set()
        await asyncio.sleep(0.005)
        now, on = time.perf_counter_ns(), events_on()
        if on and since is None:
            since = now
        elif not on and since is not None:
            intervals.append((since, now))
            since = None
    if since is not None:
        intervals.append((since, time.perf_counter_ns()))
    for start, finish in intervals:
        print("on", start, finish, flush=True)
    print("requests", requests, flush=True)
    print("clock", time.time_ns() - time.perf_counter_ns(), flush=True)


asyncio.run(main())
