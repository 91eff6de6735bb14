"""A tiny asyncio service shaped like the spec's example trace, with its own load.

Each connection is one request: handle_request -> auth_user, fetch_data -> db_query,
render_response. Requests vary on purpose: fetch_data awaited directly or run as its own
task, a request that fails in the database, one whose rendering times out (cancelled).
Plain asyncio and no async-inspect import: `async-inspect demo` runs it under the agent.
"""

import asyncio
import json

USERS = ["ada", "grace", "eve", "slowpoke"]


async def auth_user(user: str) -> dict[str, str]:
    await asyncio.sleep(0.025)  # a call to an identity service
    return {"user": user, "role": "admin" if user == "ada" else "reader"}


async def db_query(user: str) -> list[dict[str, object]]:
    await asyncio.sleep(0.04)  # a round trip to the database
    if user == "eve":
        raise PermissionError(f"{user} may not read orders")
    return [{"order": n, "user": user} for n in range(3)]


async def fetch_data(user: str) -> list[dict[str, object]]:
    rows = await db_query(user)
    return [row for row in rows if row["order"] != 1]


async def slow_template() -> str:
    await asyncio.sleep(1.0)
    return "never"


async def render_response(identity: dict[str, str], rows: list[dict[str, object]]) -> bytes:
    await asyncio.sleep(0.01)
    if identity["user"] == "slowpoke":
        await asyncio.wait_for(slow_template(), timeout=0.03)
    return json.dumps({"identity": identity, "rows": rows}).encode()


async def handle_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    user = (await reader.readline()).decode().strip()
    try:
        identity = await auth_user(user)
        if user == "grace":  # the same work as a separate task: the tree is the same
            rows = await asyncio.create_task(fetch_data(user), name=f"fetch-{user}")
        else:
            rows = await fetch_data(user)
        body = await render_response(identity, rows)
    except (PermissionError, TimeoutError) as exc:
        body = json.dumps({"error": type(exc).__name__}).encode()
    writer.write(body + b"\n")
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def client(port: int, user: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(user.encode() + b"\n")
    await writer.drain()
    answer = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return answer


async def main() -> None:
    server = await asyncio.start_server(handle_request, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        answers = await asyncio.gather(*(client(port, user) for user in USERS))
    for user, answer in zip(USERS, answers, strict=True):
        print(f"{user}: {answer.decode().strip()}")


if __name__ == "__main__":
    asyncio.run(main())
