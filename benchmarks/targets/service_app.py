"""W3, a typical service: an aiohttp handler doing about 1 ms of real work per request.

GET /order/<id>: three nested application coroutines, `handle_order -> load_order ->
query_backend`, the last one a round trip to a local TCP key-value server (kv_backend.py,
started by the harness) over a pool of kept-alive connections; then the order is priced and
rendered (plain functions: JSON decoding, a little arithmetic per line item, JSON encoding of
the response). Plain aiohttp: it runs unchanged under `python` and `async-inspect run`; with
BENCH_OTEL_PEER_ENDPOINT set it instruments itself with OpenTelemetry first (otel_peer.py).

Prints `READY pid=<pid> port=<port>` (flushed) once it serves; shuts down on SIGTERM/SIGINT.

Usage: service_app.py --backend-port N [--port N] [--pool N] [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from aiohttp import web
from otel_peer import instrument_if_asked  # type: ignore[import-not-found,unused-ignore]
from serving import serve_until_signalled  # type: ignore[import-not-found,unused-ignore]

POOL: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
REPEAT = 1  # how many times the response is rendered: the knob for ~1 ms of work


async def query_backend(key: str) -> dict[str, Any]:
    reader, writer = await POOL.get()
    try:
        writer.write(f"GET {key}\n".encode())
        await writer.drain()
        line = await reader.readline()
    finally:
        POOL.put_nowait((reader, writer))
    document: dict[str, Any] = json.loads(line)
    return document


async def load_order(order_id: str) -> dict[str, Any]:
    order = await query_backend(f"order:{order_id}")
    order["total"] = price(order)
    return order


def price(order: dict[str, Any]) -> float:
    total = 0.0
    for item in order["items"]:
        item["line_total"] = round(item["qty"] * item["unit_price"], 2)
        item["discount"] = 0.1 if "promo" in item["tags"] else 0.0
        total += item["line_total"] * (1 - item["discount"])
    return round(total, 2)


def render(order: dict[str, Any]) -> str:
    body = ""
    for _ in range(REPEAT):
        body = json.dumps(
            {"order": order, "links": {"self": f"/order/{order['id']}"}, "version": 3},
            indent=1,
            sort_keys=True,
        )
    return body


async def handle_order(request: web.Request) -> web.Response:
    order = await load_order(request.match_info["order_id"])
    return web.Response(text=render(order), content_type="application/json")


async def open_pool(port: int, size: int) -> None:
    global POOL
    POOL = asyncio.Queue()
    for _ in range(size):
        POOL.put_nowait(await asyncio.open_connection("127.0.0.1", port))


async def serve(port: int, backend_port: int, pool: int) -> None:
    instrument_if_asked()
    await open_pool(backend_port, pool)
    app = web.Application()
    app.router.add_get("/order/{order_id}", handle_order)
    try:
        await serve_until_signalled(app, port)
    finally:
        while not POOL.empty():
            POOL.get_nowait()[1].close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backend-port", type=int, required=True)
    parser.add_argument("--pool", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    REPEAT = args.repeat
    asyncio.run(serve(args.port, args.backend_port, args.pool))
