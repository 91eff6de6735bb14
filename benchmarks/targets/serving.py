"""What the aiohttp targets (W2, W3) share: serve an app on loopback, say READY with the
port, and run until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal

from aiohttp import web


async def serve_until_signalled(app: web.Application, port: int) -> None:
    """Serve `app` on 127.0.0.1:`port` (0: a free port) until SIGTERM/SIGINT; prints
    `READY pid=<pid> port=<port>` (flushed) once it accepts connections."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY pid={os.getpid()} port={bound}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
