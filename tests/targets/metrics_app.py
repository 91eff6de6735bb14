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


async def main():
    for batch in range(30):
        await asyncio.gather(*(handle(batch * 10 + j) for j in range(10)))


if __name__ == "__main__":
    asyncio.run(main())
    print("done", flush=True)
    sys.stdin.readline()
