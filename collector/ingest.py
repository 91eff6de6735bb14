"""Ingest: the Unix socket agents connect to, one `AgentConnection` per process.

BOOT    -> check the token, answer with the agent's source and settings (PAYLOAD)
HELLO   -> a process is observed: a ProcessSession with its resource and clock
CODES   -> the session's code table
SPANS   -> OpenTelemetry spans, handed to every sink
STATS   -> agent health; newly dropped records are reported once
ERROR   -> the agent could not start (no free tool id, already attached, ...)
BYE/EOF -> the session ends (EOF without BYE: the process died or was killed)
"""

from __future__ import annotations

import asyncio
import hmac
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from profiler import wire
from profiler.agent.rules import RuleBook
from profiler.agent.settings import AgentSettings
from profiler.payload import payload

from .accelerated import span_checker
from .metrics import MetricsStore
from .session import ProcessSession, ResourceSettings, SpanNames
from .sinks import RecordSink, SpanSink
from .spans import MALFORMED, build_span

__all__ = ["AgentConnection", "Notice", "ProcessSetup", "SessionHub"]

_SPAN_CHECKER = span_checker()  # compiled, or None: wire checks each span in Python
ROOM_WAIT: Final = 0.5  # seconds one SPANS frame may wait for room in a backlogged sink
ROOM_POLL: Final = 0.005


@dataclass(frozen=True)
class Notice:
    """Something the user may want to hear about: kind, pid, one-line message."""

    kind: str  # booting | started | agent_error | dropped | protocol_error | ended | lost
    pid: int
    message: str
    session: ProcessSession | None = None


@dataclass(frozen=True)
class ProcessSetup:
    """What the node daemon says of one process: what its agent does, the rules that name
    its spans, and resource attributes of its own (container, pod)."""

    agent: AgentSettings
    rules: RuleBook
    resource: dict[str, str]


class SessionHub:
    """Shared by all connections: settings, sinks, live sessions, and the notice callback."""

    def __init__(
        self,
        sinks: list[SpanSink],
        agent_settings: AgentSettings,
        resource: ResourceSettings,
        token: str,
        notify: Callable[[Notice], None],
        metrics: MetricsStore | None = None,
        rules: RuleBook | None = None,
        names: SpanNames | None = None,
        setup_for: Callable[[int], ProcessSetup | None] | None = None,
    ) -> None:
        self.setup_for = setup_for  # the node daemon's word on each PID
        self.sinks = sinks
        self.rules = rules if rules is not None else RuleBook([])
        self.names = names if names is not None else SpanNames(1000)
        self.agent_settings = agent_settings
        self.resource = resource
        self.token = token
        self.notify = notify
        self.sessions: dict[int, ProcessSession] = {}
        self.connections: set[AgentConnection] = set()
        self.metrics = metrics if metrics is not None else MetricsStore()
        self.malformed_spans = 0
        self.spans_exported = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def connection_for(self, pid: int) -> AgentConnection | None:
        """The live connection of the agent in process `pid`, if any."""
        for connection in self.connections:
            if connection.pid == pid and connection.session is not None:
                return connection
        return None

    def setup(self, pid: int) -> ProcessSetup | None:
        """The node daemon's setup for `pid` (None: the hub's own settings and rules)."""
        return self.setup_for(pid) if self.setup_for is not None else None

    def token_ok(self, token: object) -> bool:
        """True if a peer presented this collector's token."""
        return isinstance(token, str) and hmac.compare_digest(token, self.token)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """asyncio.start_unix_server callback: serve one agent until it leaves."""
        connection = AgentConnection(self, reader, writer)
        self.connections.add(connection)
        self._idle.clear()
        try:
            await connection.serve()
        finally:
            self.connections.discard(connection)
            if not self.connections:
                self._idle.set()

    async def make_room(self, count: int) -> None:
        """Wait (at most ROOM_WAIT s) while a record sink is backlogged for `count` more
        records: the caller stops reading its agent meanwhile, and the agent's socket, then
        its bounded buffer, absorb the burst."""
        waiting = [s for s in self.sinks if isinstance(s, RecordSink) and s.backlogged(count)]
        if not waiting:
            return
        deadline = time.monotonic() + ROOM_WAIT
        while time.monotonic() < deadline and any(s.backlogged(count) for s in waiting):
            await asyncio.sleep(ROOM_POLL)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no agent is connected; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def emit(self, session: ProcessSession, records: list[tuple[Any, ...]]) -> None:
        """Give span records to every sink: as they are to record sinks (OTLP), as
        ReadableSpans, built only if such a sink is configured, to the others."""
        record_sinks = [sink for sink in self.sinks if isinstance(sink, RecordSink)]
        span_sinks = [sink for sink in self.sinks if not isinstance(sink, RecordSink)]
        good = records
        if span_sinks:
            good = []
            for record in records:
                try:
                    span = build_span(session, record)
                except MALFORMED:
                    self.malformed_spans += 1
                    continue
                for sink in span_sinks:
                    sink.on_span(span)
                good.append(record)
        malformed = max((sink.on_records(session, good) for sink in record_sinks), default=0)
        self.malformed_spans += malformed
        self.spans_exported += len(good) - malformed
        session.spans_received += len(records)
        if not record_sinks:  # else the OTLP exporter counts what its endpoint accepted
            self.metrics.spans_exported = self.spans_exported


def _peer_pid(writer: asyncio.StreamWriter) -> int:
    sock = writer.get_extra_info("socket")
    try:
        pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except (OSError, AttributeError, struct.error):
        return 0
    return int(pid)


class AgentConnection:
    """The frames of one agent connection, in order."""

    def __init__(
        self, hub: SessionHub, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.hub = hub
        self.reader = reader
        self.writer = writer
        self.session: ProcessSession | None = None
        # The kernel's word for who is on the other end, as a PID of *our* namespace; what
        # the agent says of itself is its own view (1 inside a container's PID namespace).
        self.peer_pid = _peer_pid(writer)
        self.pid = self.peer_pid
        self._said_bye = False
        self._decoder = wire.FrameDecoder(wire.AGENT_KINDS, _SPAN_CHECKER)

    async def serve(self) -> None:
        """Read frames until EOF or a protocol error."""
        try:
            while True:
                data = await self.reader.read(1 << 20)
                if not data:
                    break
                for kind, body in self._decoder.feed(data):
                    if kind == wire.SPANS and self.session is not None:
                        await self.hub.make_room(len(body))
                    self._on_frame(kind, body)
        except wire.WireError as exc:
            self.hub.notify(Notice("protocol_error", self.pid, f"malformed frame: {exc}"))
        except ConnectionError:
            pass
        finally:
            self.writer.close()
            self._ended()

    def send(self, kind: int, body: Any) -> None:
        """Queue a frame to the agent (PAYLOAD or STOP)."""
        if not self.writer.is_closing():
            self.writer.write(wire.encode_frame(kind, body))

    def stop(self, reason: str) -> None:
        """Ask the agent to detach."""
        self.send(wire.STOP, {"reason": reason})

    def _on_frame(self, kind: int, body: Any) -> None:
        hub = self.hub
        if kind == wire.BOOT:
            self.pid = self.peer_pid or int(body.get("pid", 0))
            if not hub.token_ok(body.get("token")):
                self.send(wire.STOP, {"reason": "bad token"})
                raise wire.WireError("a process presented a wrong session token")
            setup = hub.setup(self.pid)
            self.send(wire.PAYLOAD, payload(setup.agent if setup else hub.agent_settings))
            hub.notify(Notice("booting", self.pid, f"Python {body.get('python')} connected"))
        elif kind == wire.HELLO:
            if not hub.token_ok(body.get("token")):
                raise wire.WireError("an agent presented a wrong session token")
            setup = hub.setup(self.peer_pid)
            rules, extra = (setup.rules, setup.resource) if setup else (hub.rules, {})
            self.session = ProcessSession(
                body, hub.resource, self.peer_pid, rules, hub.names, extra
            )
            self.pid = self.session.pid
            hub.sessions[self.pid] = self.session
            verb = "reconnected" if body.get("reconnect") else "started"
            hub.notify(Notice("started", self.pid, verb, self.session))
        elif kind == wire.ERROR:
            code, message = body
            hub.notify(Notice("agent_error", self.pid, f"{code}: {message}"))
        elif self.session is None:
            raise wire.WireError(f"frame kind {kind} before HELLO")
        elif kind == wire.CODES:
            self.session.add_codes(body)
        elif kind == wire.SPANS:
            hub.emit(self.session, body)
        elif kind == wire.STATS:
            self._on_stats(self.session, body)
        elif kind == wire.BYE:
            self._said_bye = True
            hub.notify(Notice("ended", self.pid, str(body.get("reason", "")), self.session))

    def _on_stats(self, session: ProcessSession, stats: dict[str, Any]) -> None:
        session.stats = stats
        self.hub.metrics.update(session, stats)
        dropped = stats.get("dropped", {})
        fresh = {
            reason: int(count) - session.dropped_reported.get(reason, 0)
            for reason, count in dropped.items()
            if int(count) > session.dropped_reported.get(reason, 0)
        }
        if fresh:
            session.dropped_reported.update({k: int(v) for k, v in dropped.items()})
            text = ", ".join(f"{count} ({reason})" for reason, count in sorted(fresh.items()))
            self.hub.notify(Notice("dropped", self.pid, f"agent dropped records: {text}", session))

    def _ended(self) -> None:
        if self.session is not None:
            self.hub.metrics.ended(self.session, lost=not self._said_bye)
        if self.session is not None and not self._said_bye:
            self.hub.notify(Notice("lost", self.pid, "connection lost", self.session))
        if self.session is not None and self.hub.sessions.get(self.pid) is self.session:
            del self.hub.sessions[self.pid]
