"""W2: an aiohttp hello-world server on 127.0.0.1, a free port.

Plain aiohttp: it must run unchanged under `python` and under `async-inspect run`.
Prints `READY pid=<pid> port=<port>` (flushed) once it accepts connections, and shuts
down cleanly on SIGTERM or SIGINT, so an agent in it can say goodbye. With
BENCH_OTEL_PEER_ENDPOINT set it instruments itself with OpenTelemetry's aiohttp-server
instrumentation first (the `peer-otel` mode, see otel_peer.py).

Usage: hello_server.py [--port N]   (0, the default: a free port)
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web
from otel_peer import instrument_if_asked  # type: ignore[import-not-found,unused-ignore]
from serving import serve_until_signalled  # type: ignore[import-not-found,unused-ignore]


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="Hello")


async def serve(port: int) -> None:
    instrument_if_asked()
    app = web.Application()
    app.router.add_get("/", hello)
    await serve_until_signalled(app, port)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args().port))
