"""Target for injection tests: asyncio event loops in the shapes a profiler meets.

    python asyncio_loops.py busy      one loop that never idles; prints "tick N" every 0.1 s
    python asyncio_loops.py idle      one echo server blocked in epoll: no timers, no traffic
    python asyncio_loops.py thread    an idle echo server in a non-main thread; main in join()
    python asyncio_loops.py threads   three idle echo servers, one per thread; main in join()

Prints one line `ready {"pid": ..., "main": [...], "ports": [...]}` once serving.
"""

import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Callable


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.readline())
    await writer.drain()
    writer.close()


async def serve(ports: list[int], on_serving: Callable[[], object]) -> None:
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    ports.append(server.sockets[0].getsockname()[1])
    on_serving()
    await server.serve_forever()


async def spin() -> None:
    count, last = 0, time.monotonic()
    while True:
        await asyncio.sleep(0)
        count += 1
        if time.monotonic() - last >= 0.1:
            print("tick", count, flush=True)
            last = time.monotonic()


def ready(ports: list[int]) -> None:
    info = {"pid": os.getpid(), "main": sorted(globals()), "ports": ports}
    print("ready", json.dumps(info), flush=True)


def main(shape: str) -> None:
    ports: list[int] = []
    if shape == "busy":

        async def busy() -> None:
            ready(ports)
            await spin()

        asyncio.run(busy())
    elif shape == "idle":
        asyncio.run(serve(ports, lambda: ready(ports)))
    else:
        count = 3 if shape == "threads" else 1
        threads = []
        for _ in range(count):
            started = threading.Event()
            loop_thread = threading.Thread(target=asyncio.run, args=(serve(ports, started.set),))
            loop_thread.start()
            started.wait()
            threads.append(loop_thread)
        ready(ports)
        for loop_thread in threads:
            loop_thread.join()


if __name__ == "__main__":
    main(sys.argv[1])
