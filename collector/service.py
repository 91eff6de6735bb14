"""A collector for one CLI session: private socket in, configured outputs out.

`run`, `attach` and `demo` each start one; the node daemon builds on the same parts.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import select
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from profiler.agent.rules import RuleBook
from profiler.agent.settings import AgentSettings
from profiler.attach.rendezvous import Rendezvous
from profiler.errors import ExportError

from .ingest import Notice, SessionHub
from .jsonl import JsonLinesWriter
from .metrics import MetricsStore
from .session import ResourceSettings, SpanNames
from .settings import Settings
from .sinks import ProcessorSink, SpanSink, load_span_processor
from .tree import TreePrinter

if TYPE_CHECKING:
    from .http import HttpServer
    from .otlp import ExportWatch

__all__ = ["SOCKET_NAME", "LocalCollector", "Summary", "agent_settings_from", "build_sinks"]

SOCKET_NAME = "agent.sock"


def agent_settings_from(settings: Settings, **overrides: object) -> AgentSettings:
    """What the agent needs to know of the user's settings."""
    values: dict[str, object] = {
        "include": settings.include,
        "exclude": settings.exclude,
        "max_events": settings.max_events,
        "split_after": settings.split_after,
        # In bursts, the ratio is the share of the time recorded: all of a burst is.
        "sample_ratio": settings.sample_ratio if settings.burst is None else 1.0,
        "burst": settings.burst or 0.0,
        "burst_every": settings.burst_every,
        "parent_based": settings.sampler.startswith("parentbased"),
        "rules": tuple(rule.to_wire() for rule in settings.rules),
        "max_attribute_values": settings.max_attribute_values,
    }
    values.update(overrides)
    return AgentSettings(**values)  # type: ignore[arg-type]


def build_sinks(
    settings: Settings,
    tree: TextIO | None,
    metrics: MetricsStore,
    warn: Callable[[str], None],
) -> tuple[list[SpanSink], ExportWatch | None]:
    """The outputs the settings ask for: terminal trees, JSON lines, OTLP, extra processors,
    and the watch that counts what the OTLP endpoint got (None without an endpoint)."""
    sinks: list[SpanSink] = []
    watch = None
    if tree is not None:
        sinks.append(TreePrinter(tree))
    if settings.output:
        try:
            stream = open(settings.output, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise ExportError(
                f"cannot write {settings.output}: {exc.strerror}", "choose another --output"
            ) from None
        sinks.append(JsonLinesWriter(stream))
    # Loaded first: a processor that cannot be loaded leaves no exporter thread behind.
    processors = [ProcessorSink(load_span_processor(path)) for path in settings.span_processors]
    if settings.endpoint:
        from .otlp import ExportWatch, OtlpExporter  # gRPC only with an endpoint

        watch = ExportWatch(settings.endpoint, warn, metrics)
        sinks.append(OtlpExporter(settings, watch))
    return sinks + processors, watch


@dataclass(frozen=True)
class Summary:
    """What a session produced, for the closing line."""

    spans: int
    processes: int
    malformed: int
    flushed: bool
    lost: int = 0  # spans the OTLP endpoint never got
    lost_by_reason: tuple[tuple[str, int], ...] = ()  # (reason, spans), the nonzero ones


# How long an interrupted session lets a connection it has not served yet reach it.
ARRIVAL_SETTLE = 0.2


class LocalCollector:
    """Listens on a private Unix socket and sends spans to the tree, a file and/or OTLP."""

    def __init__(
        self,
        settings: Settings,
        notify: Callable[[Notice], None],
        tree: TextIO | None,
        agent_settings: AgentSettings | None = None,
    ) -> None:
        self.settings = settings
        self.token = secrets.token_hex(16)
        self._notify = notify
        self.metrics = MetricsStore()
        self.sinks, self.export_watch = build_sinks(settings, tree, self.metrics, self._warn)
        resource = ResourceSettings(
            settings.service_name, settings.service_version, dict(settings.resource_attributes)
        )
        self.hub = SessionHub(
            self.sinks,
            agent_settings or agent_settings_from(settings),
            resource,
            self.token,
            self._on_notice,
            self.metrics,
            RuleBook(list(settings.rules)),
            SpanNames(settings.max_span_names),
        )
        self.http: HttpServer | None = None
        self._directory: str | None = None
        self._rendezvous: Rendezvous | None = None
        self._server: asyncio.Server | None = None
        self.processes_seen: set[int] = set()
        self.address = ""

    async def start(self, rendezvous: Rendezvous | None = None) -> str:
        """Listen on `agent.sock` in a private folder (0700, socket 0600): a temporary one, or
        `rendezvous` (a folder in an attached target's file system, owned by its user).
        Returns the socket's path as the agent sees it."""
        if rendezvous is None:
            self._directory = tempfile.mkdtemp(prefix="async-inspect-")
            os.chmod(self._directory, 0o700)
            host_path = self.address = os.path.join(self._directory, "agent.sock")
        else:
            self._rendezvous = rendezvous
            host_path = rendezvous.host_path(SOCKET_NAME)
            self.address = rendezvous.target_path(SOCKET_NAME)
        try:
            await self._listen(host_path)
        except BaseException:  # e.g. the metrics port in use: leave no folder behind
            if self._server is not None:
                self._server.close()
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
            raise
        return self.address

    async def _listen(self, host_path: str) -> None:
        self._server = await asyncio.start_unix_server(self.hub.handle, path=host_path)
        if self._rendezvous is None:
            os.chmod(host_path, 0o600)
        else:
            self._rendezvous.hand_over(SOCKET_NAME)
        if self.settings.metrics_port is not None:
            # aiohttp and prometheus-client only when serving: a third of the CLI's start-up
            from .api import add_api_routes, session_processes
            from .exposition import build_registry
            from .http import HttpServer

            self.http = HttpServer(build_registry(self.metrics, self.settings.metrics_naming))
            add_api_routes(self.http.app, self.metrics, lambda: session_processes(self.metrics))
            await self.http.start(self.settings.metrics_address, self.settings.metrics_port)

    async def agent_arriving(self, settle: float = ARRIVAL_SETTLE) -> bool:
        """Whether an agent has connected, or is connecting: the kernel may have queued or
        accepted its connection before this loop got round to serving it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settle
        while not self.hub.connections:
            if loop.time() >= deadline:
                return self._connection_queued()
            await asyncio.sleep(0.01)
        return True

    def _connection_queued(self) -> bool:
        sockets = self._server.sockets if self._server is not None else ()
        return any(select.select([sock.fileno()], [], [], 0)[0] for sock in sockets)

    async def finish(self, wait_for_agents: float) -> Summary:
        """Wait for agents to say goodbye, stop listening, flush and shut every output."""
        await self.hub.wait_idle(wait_for_agents)
        if self.http is not None:
            await self.http.stop()
        if self._server is not None:
            self._server.close()
        for connection in list(self.hub.connections):
            connection.writer.close()
        flushed = await asyncio.to_thread(self._shutdown_sinks)
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
        if self._rendezvous is not None:
            self._rendezvous.remove()
        watch = self.export_watch
        return Summary(
            self.hub.spans_exported,
            len(self.processes_seen),
            self.hub.malformed_spans,
            flushed,
            watch.spans_lost if watch is not None else 0,
            tuple((k, n) for k, n in watch.dropped.items() if n) if watch is not None else (),
        )

    def _on_notice(self, notice: Notice) -> None:
        if notice.kind == "started":
            self.processes_seen.add(notice.pid)
        self._notify(notice)

    def _shutdown_sinks(self) -> bool:
        flushed = True
        for sink in self.sinks:
            flushed = sink.flush(self.settings.bsp_export_timeout) and flushed
            sink.shutdown()
        if self.export_watch is not None:
            flushed = flushed and self.export_watch.spans_lost == 0
        return flushed

    def _warn(self, message: str) -> None:
        self._notify(Notice("warning", 0, message))
