"""A small asyncio app used as an attach target: an echo server on 127.0.0.1.

Modes (first argument):
  busy    the loop runs in the main thread and a task keeps it busy executing bytecode
  idle    the loop runs in the main thread with no traffic and no timers (parked in epoll_wait)
  thread  the loop (busy, as above) runs in a worker thread; the main thread blocks in join()

Once serving, it prints one line to stdout: ``READY <port> <native id of the loop thread>``.
Any client line is echoed back, which is how tests check the app still works after an attach.
Runs on Python 3.12+ with the standard library only.
"""

import asyncio
import sys
import threading


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()
    writer.close()


async def _spin() -> None:
    # Keeps the loop executing Python code, like an app under load.
    while True:
        sum(range(200))
        await asyncio.sleep(0)


async def _serve(busy: bool) -> None:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    spinner = asyncio.create_task(_spin()) if busy else None
    print(f"READY {port} {threading.get_native_id()}", flush=True)
    async with server:
        await server.serve_forever()
    del spinner


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "busy"
    if mode == "thread":
        worker = threading.Thread(target=asyncio.run, args=(_serve(True),), name="loop")
        worker.start()
        worker.join()
    else:
        asyncio.run(_serve(mode == "busy"))


if __name__ == "__main__":
    main()
