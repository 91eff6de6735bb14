"""Target that serves forever until interrupted (Ctrl-C test)."""

import asyncio


async def tick(n):
    await asyncio.sleep(0.01)
    return n


async def serve():
    n = 0
    print("ready", flush=True)
    while True:
        n = await tick(n + 1)


if __name__ == "__main__":
    asyncio.run(serve())
