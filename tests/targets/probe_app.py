"""Target for attach tests. Modes: busy, idle, thread (loop in a worker thread, main thread in
join()), multi (two loops in two threads), crowd (idle, with 60,000 pending tasks for an agent
to adopt as it starts). Prints `ready <port>` once serving.

A line sent to the port is answered by the loop that owns it: `probe` returns JSON describing
what an agent could have left in this process; anything else runs handle_request (the spec's
tree) and returns `ok`.
"""

import asyncio
import json
import sys
import threading

MODE = sys.argv[1] if len(sys.argv) > 1 else "idle"


async def auth_user():
    await asyncio.sleep(0.01)


async def db_query():
    await asyncio.sleep(0.01)


async def fetch_data():
    await db_query()


async def handle_request():
    await auth_user()
    await fetch_data()


def probe(loop):
    return {
        "tools": {str(i): sys.monitoring.get_tool(i) for i in range(6)},
        "factory": repr(loop.get_task_factory()),
        "create_task_wrapped": "create_task" in vars(loop),  # by the agent on 3.13
        "threads": sorted(t.name for t in threading.enumerate()),
        "modules": sorted(m for m in sys.modules if "async_inspect" in m),
        "main_globals": sorted(k for k in vars(sys.modules["__main__"]) if "inspect" in k),
    }


async def serve_client(reader, writer):
    line = (await reader.readline()).decode().strip()
    if line == "probe":
        answer = json.dumps(probe(asyncio.get_running_loop()))
    elif line == "quit":
        QUIT[asyncio.get_running_loop()].set()
        answer = "bye"
    else:
        await handle_request()
        answer = "ok"
    writer.write(answer.encode() + b"\n")
    await writer.drain()
    writer.close()


async def spin():
    while True:
        await asyncio.sleep(0)


QUIT = {}


async def parked(quit):
    await quit.wait()


async def serve(ports, busy, announce=False):
    quit = QUIT[asyncio.get_running_loop()] = asyncio.Event()
    crowd = [asyncio.ensure_future(parked(quit)) for _ in range(60_000 if MODE == "crowd" else 0)]
    server = await asyncio.start_server(serve_client, "127.0.0.1", 0)
    ports.append(server.sockets[0].getsockname()[1])
    if announce:
        print("ready", *ports, flush=True)
    spinner = asyncio.create_task(spin()) if busy else None
    async with server:
        await QUIT[asyncio.get_running_loop()].wait()
    if spinner is not None:
        spinner.cancel()
    await asyncio.gather(*crowd)


def in_thread(ports, busy, name):
    thread = threading.Thread(target=asyncio.run, args=(serve(ports, busy),), name=name)
    thread.start()
    return thread


def main():
    ports = []
    if MODE in ("busy", "idle", "crowd"):
        asyncio.run(serve(ports, MODE == "busy", announce=True))
        return
    threads = [in_thread(ports, False, "loop-1")]
    if MODE == "multi":
        threads.append(in_thread(ports, True, "loop-2"))
    while len(ports) < len(threads):
        threading.Event().wait(0.01)
    print("ready", *ports, flush=True)
    threads[0].join()


if __name__ == "__main__":
    main()
