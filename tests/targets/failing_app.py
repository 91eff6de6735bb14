"""Target for the Prometheus test: a plain asyncio service where a third of the requests fail,
a job is cancelled every round, and a heartbeat blocks the loop for 150 ms every second.
Prints "ready", then serves until interrupted (at most 120 s)."""

import asyncio
import time


async def lookup(n):
    await asyncio.sleep(0.005)
    return n


async def handle_request(n):
    value = await lookup(n)
    if value % 3 == 0:
        raise ValueError(f"request {n} failed")
    return value


async def slow_job():
    await asyncio.sleep(10)


async def heartbeat():
    while True:
        time.sleep(0.15)  # a blocking call: every other task waits
        await asyncio.sleep(1)


async def serve():
    print("ready", flush=True)
    beat = asyncio.create_task(heartbeat())
    deadline = time.monotonic() + 120
    n = 0
    while time.monotonic() < deadline:
        batch = [asyncio.create_task(handle_request(n + i)) for i in range(5)]
        n += len(batch)
        job = asyncio.create_task(slow_job())
        await asyncio.gather(*batch, return_exceptions=True)
        job.cancel()
        await asyncio.sleep(0.1)
    beat.cancel()


if __name__ == "__main__":
    asyncio.run(serve())
