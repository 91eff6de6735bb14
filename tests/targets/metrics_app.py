"""Target for metrics tests: 300 requests (every third fails inside), then waits for stdin."""

import asyncio
import sys


async def ok_call():
    await asyncio.sleep(0.001)


async def bad_call():
    await asyncio.sleep(0)
    raise ValueError("nope")


async def handle(i):
    await ok_call()
    if i % 3 == 0:
        try:
            await bad_call()
        except ValueError:
            pass


def spawn(batch, spawned):
    spawned.set_result([asyncio.ensure_future(handle(batch * 10 + j)) for j in range(10)])


async def main():
    loop = asyncio.get_running_loop()
    for batch in range(30):
        # Made from a loop callback, outside any coroutine, each request is a trace root of
        # its own, sampled or not by itself, as a server's requests are. (Made by main, all
        # would be in main's trace and share its one 1% draw.)
        spawned = loop.create_future()
        loop.call_soon(spawn, batch, spawned)
        await asyncio.gather(*await spawned)


if __name__ == "__main__":
    asyncio.run(main())
    print("done", flush=True)
    sys.stdin.readline()
