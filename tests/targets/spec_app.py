"""Target for `run` tests: the spec's trace twice (fetch_data awaited, then as a task),
a failing task, a cancelled task, a task still blocked at exit, and some stdio."""

import asyncio
import sys
import threading


async def auth_user():
    await asyncio.sleep(0.05)


async def db_query():
    await asyncio.sleep(0.08)
    return [1, 2]


async def fetch_data():
    return await db_query()


async def render_response(rows):
    await asyncio.sleep(0.05)
    return str(rows)


async def handle_request(as_task):
    await auth_user()
    if as_task:
        rows = await asyncio.create_task(fetch_data(), name="fetch-task")
    else:
        rows = await fetch_data()
    return await render_response(rows)


async def failing():
    await asyncio.sleep(0.01)
    raise ValueError("boom")


async def sleeper():
    await asyncio.sleep(10)


async def main():
    print("app stdout line")
    print("app stderr line", file=sys.stderr)
    await handle_request(False)
    await asyncio.create_task(handle_request(True), name="request-2")
    try:
        await asyncio.create_task(failing(), name="will-fail")
    except ValueError:
        pass
    victim = asyncio.create_task(sleeper(), name="will-cancel")
    await asyncio.sleep(0.02)
    victim.cancel()
    try:
        await victim
    except asyncio.CancelledError:
        pass


async def stuck_forever():
    await asyncio.Event().wait()


def background_loop(ready):
    async def run():
        asyncio.get_running_loop().call_soon(ready.set)
        await stuck_forever()

    asyncio.run(run())


if __name__ == "__main__":
    ready = threading.Event()
    threading.Thread(target=background_loop, args=(ready,), daemon=True).start()
    ready.wait()
    asyncio.run(main())
    sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
