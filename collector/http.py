"""The HTTP side of a collector: /metrics for Prometheus, /healthz and /readyz for probes.

aiohttp on the collector's own event loop; the node daemon adds its API routes to the same
application. /metrics is rendered from our own registry at request time.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from profiler.errors import ConfigError

__all__ = ["HttpServer"]


class HttpServer:
    """Serves one registry plus health endpoints; `problems()` lists why we are not ready."""

    def __init__(
        self, registry: CollectorRegistry, problems: Callable[[], list[str]] | None = None
    ) -> None:
        self.registry = registry
        self.problems = problems or (lambda: [])
        self.app = web.Application()
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, address: str, port: int) -> int:
        """Listen on address:port (port 0: any free one); returns the port. ConfigError if
        the address is bad or the port taken."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, address, port, reuse_address=True)
        try:
            await site.start()
        except socket.gaierror as exc:
            await self._runner.cleanup()
            raise ConfigError(
                f"bad metrics address {address!r}: {exc.strerror}",
                "use an address of this machine, e.g. 127.0.0.1 or 0.0.0.0",
            ) from None
        except OSError as exc:
            await self._runner.cleanup()
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"metrics port {port} on {address} is already in use",
                    "choose another --metrics-port",
                ) from None
            raise ConfigError(
                f"cannot listen on {address}:{port} for metrics: {exc.strerror or exc}",
                "use an address of this machine, e.g. 127.0.0.1 or 0.0.0.0",
            ) from None
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        problems = self.problems()
        if problems:
            return web.Response(status=503, text="".join(f"{p}\n" for p in problems))
        return web.Response(text="ready\n")
