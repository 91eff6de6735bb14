"""A target for attach latency, standard library only (runs on any CPython 3.12+).

Modes, as an attach finds them:
  busy    the loop never sleeps: a task spinning on `asyncio.sleep(0)`, plus a server
  idle    asyncio.start_server and no traffic: the loop parked in epoll_wait
  thread  the loop in a worker thread (idle), the main thread blocked in join()

Prints `READY pid=<pid> port=<port>` (flushed); a line sent to the port is answered `ok` by
an application coroutine. Exits on SIGTERM (or when killed).

Usage: attach_target.py busy|idle|thread
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading


async def handle_request() -> str:
    await asyncio.sleep(0)
    return "ok"


async def serve_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readline()
    writer.write((await handle_request()).encode() + b"\n")
    await writer.drain()
    writer.close()


async def spin() -> None:
    while True:
        await asyncio.sleep(0)


async def serve(busy: bool) -> None:
    server = await asyncio.start_server(serve_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    spinner = asyncio.create_task(spin()) if busy else None
    print(f"READY pid={os.getpid()} port={port}", flush=True)
    async with server:
        await asyncio.Event().wait()  # until the process is stopped
    del spinner


def main(mode: str) -> None:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if mode in ("busy", "idle"):
        asyncio.run(serve(mode == "busy"))
        return
    worker = threading.Thread(target=asyncio.run, args=(serve(False),), name="loop", daemon=True)
    worker.start()
    worker.join()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "idle")
