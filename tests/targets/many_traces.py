"""Target for sampling tests: N independent request traces (request -> lookup, render),
each started from a plain callback so each is its own trace root; then a rule-laden mix."""

import asyncio
import sys

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000


async def lookup(kind):
    await asyncio.sleep(0)
    return kind


async def render(kind):
    await asyncio.sleep(0)


async def request(kind, order_id):
    await lookup(kind)
    await render(kind)


async def health():
    await asyncio.sleep(0)


async def noisy():
    await asyncio.sleep(0)


async def main():
    loop = asyncio.get_running_loop()
    started = []

    def start(i):  # a callback, not a coroutine: each request is its own trace
        started.append(asyncio.ensure_future(request(("book", "toy", "tea")[i % 3], 10_000 + i)))
        started.append(asyncio.ensure_future(health()))
        started.append(asyncio.ensure_future(noisy()))

    for i in range(N):
        loop.call_soon(start, i)
    await asyncio.sleep(0)
    while len(started) < 3 * N:
        await asyncio.sleep(0.01)
    await asyncio.gather(*started)


if __name__ == "__main__":
    asyncio.run(main())
