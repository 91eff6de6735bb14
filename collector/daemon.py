"""The node daemon (`async-inspect collector`): find the asyncio services of this node, attach
to the selected ones, follow them through exits and restarts, detach from all on shutdown.

    every `interval` s: scan processes -> Kubernetes pods (if any) -> select -> attach
    attach: a folder + socket in the target's /tmp, bootstrap injected, agent reports back
    a failing attach backs off (5 s, 10 s, ... 5 min) and its error is kept for /api
    agent gone (exit, kill, its own orphan timeout): the socket is removed; a process that
    is still selected is attached again, a new PID (a restarted service) too

Every span goes through the same hub and sinks as `run`; each process's resource carries
its container id and, on Kubernetes, its pod, namespace, container and node.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from profiler.agent.rules import RuleBook
from profiler.attach.injector import bootstrap_code, inject_bootstrap
from profiler.attach.process import check_ptrace
from profiler.attach.rendezvous import Rendezvous, prepare_rendezvous
from profiler.errors import AgentError, AsyncInspectError

from .api import add_api_routes
from .discovery import ProcessFacts, Scanner
from .exposition import build_registry
from .http import HttpServer
from .ingest import Notice, ProcessSetup, SessionHub
from .kubernetes import KubeApi, PodDirectory, PodInfo
from .metrics import MetricsStore
from .selection import Selection, Selector
from .service import SOCKET_NAME, agent_settings_from, build_sinks
from .session import ResourceSettings, SpanNames
from .settings import Settings

__all__ = ["DaemonSettings", "NodeDaemon", "Tracked"]

log = logging.getLogger("async_inspect.daemon")
MAX_BACKOFF = 300.0
FORGET_AFTER = 300.0  # seconds a process that exited stays listed in /api/processes


@dataclass(frozen=True)
class DaemonSettings:
    """The `[collector]` table and its flags."""

    interval: float = 5.0
    max_processes: int = 50
    orphan_timeout: float = 60.0
    attach_timeout: float = 5.0
    node_name: str | None = None


@dataclass
class Tracked:
    """One process as the daemon follows it."""

    facts: ProcessFacts
    status: str = "seen"  # unsupported | not selected | selected | attaching | attached | failed
    reason: str = ""
    since: float = field(default_factory=time.time)
    service: str = ""
    pod: PodInfo | None = None
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    attached_at: float | None = None
    exited_at: float | None = None
    confirmed: threading.Event = field(default_factory=threading.Event)
    agent_error: str | None = None
    rendezvous: Rendezvous | None = None
    listener: asyncio.AbstractServer | None = None
    table: Selector | None = None  # the [[select]] table it was attached by

    def set_status(self, status: str, reason: str) -> None:
        """Change status (and the time it changed) only if it differs."""
        if (status, reason) != (self.status, self.reason):
            self.status, self.reason, self.since = status, reason, time.time()


class NodeDaemon:
    """Discovery, selection and the attach life cycle, over one hub and one HTTP server."""

    def __init__(
        self,
        settings: Settings,
        daemon: DaemonSettings,
        selection: Selection,
        kube: KubeApi | None,
    ) -> None:
        self.settings = settings
        self.daemon = daemon
        self.selection = selection
        self.pods = PodDirectory(kube, daemon.node_name)
        self.scanner = Scanner()
        self.metrics = MetricsStore()
        self.sinks, _ = build_sinks(settings, None, self.metrics, self._warn)  # counts: metrics
        self.token = secrets.token_hex(16)
        self.hub = SessionHub(
            self.sinks,
            agent_settings_from(settings, orphan_timeout=daemon.orphan_timeout),
            # One daemon serves many services: no global service name, each process's own.
            ResourceSettings(None, settings.service_version, dict(settings.resource_attributes)),
            self.token,
            self._on_notice,
            self.metrics,
            names=SpanNames(settings.max_span_names),
            setup_for=self._setup_for,
        )
        self.tracked: dict[tuple[int, float], Tracked] = {}
        self.http = HttpServer(build_registry(self.metrics, settings.metrics_naming), self.problems)
        add_api_routes(self.http.app, self.metrics, self.processes)
        self.scans = 0
        self._attaching: set[asyncio.Task[None]] = set()

    # -- the loop -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, port: int, address: str) -> None:
        """Serve until `stop` is set, then detach from everything."""
        await self.http.start(address, port)
        log.info("serving metrics and API on %s:%d", address, self.http.port)
        try:
            while not stop.is_set():
                await self.scan_once()
                try:
                    await asyncio.wait_for(stop.wait(), self.daemon.interval)
                except TimeoutError:
                    pass
        finally:
            await self.shutdown()

    async def scan_once(self) -> None:
        """One discovery round: refresh pods, scan processes, (re)attach what is selected."""
        await self.pods.refresh()
        found = await asyncio.to_thread(self.scanner.scan)
        now = time.monotonic()
        alive = {facts.key for facts in found}
        for key, tracked in list(self.tracked.items()):
            if key not in alive and tracked.status in ("not selected", "unsupported"):
                del self.tracked[key]  # never ours: nothing to report about its exit
            elif key not in alive and tracked.exited_at is None:
                tracked.exited_at = now
                self._release(tracked)
                tracked.set_status("exited", "the process is gone")
            elif tracked.exited_at is not None and now - tracked.exited_at > FORGET_AFTER:
                del self.tracked[key]
        for facts in found:
            tracked = self.tracked.setdefault(facts.key, Tracked(facts))
            self._consider(tracked, now)
        self.scans += 1

    def _consider(self, tracked: Tracked, now: float) -> None:
        facts = tracked.facts
        tracked.pod = self.pods.pod_for(facts.container_id)
        tracked.service = _service_of(facts, tracked.pod)
        if facts.target is None:
            tracked.set_status("unsupported", facts.problem)
            return
        selected, reason, table = self.selection.decide(facts, tracked.pod, tracked.service)
        if not selected:
            tracked.set_status("not selected", reason)
            return
        if tracked.status in ("attaching", "attached"):
            return
        if self._attached_count() >= self.daemon.max_processes:
            tracked.set_status("selected", f"waiting: {self.daemon.max_processes} attached (cap)")
            return
        if now < tracked.next_attempt:
            return
        tracked.set_status("attaching", reason)
        # Sent to the agent as it boots: it keeps them until it is attached again.
        tracked.table = table
        task = asyncio.create_task(self._attach(tracked))
        self._attaching.add(task)
        task.add_done_callback(self._attaching.discard)

    async def _attach(self, tracked: Tracked) -> None:
        target = tracked.facts.target
        assert target is not None
        tracked.confirmed.clear()
        tracked.agent_error = None
        try:
            rendezvous = tracked.rendezvous = await asyncio.to_thread(prepare_rendezvous, target)
            tracked.listener = await asyncio.start_unix_server(
                self.hub.handle, path=rendezvous.host_path(SOCKET_NAME)
            )
            rendezvous.hand_over(SOCKET_NAME)
            code = bootstrap_code(rendezvous.target_path(SOCKET_NAME), self.token)
            method = await asyncio.to_thread(
                inject_bootstrap, target, rendezvous, code, tracked.confirmed,
                self.daemon.attach_timeout,
            )  # fmt: skip
            if tracked.agent_error is not None:
                raise AgentError(f"the agent could not start: {tracked.agent_error}")
        except AsyncInspectError as exc:
            self._failed(tracked, str(exc))
            return
        except OSError as exc:  # the socket could not be made: the target's /tmp went away
            self._failed(tracked, f"cannot listen for PID {target.pid}: {exc}")
            return
        tracked.attempts = 0
        tracked.last_error = ""
        tracked.attached_at = time.time()
        tracked.set_status("attached", f"via {method}")
        log.info("attached to PID %d (%s, %s) via %s", target.pid, tracked.service,
                 target.version_str, method)  # fmt: skip

    def _failed(self, tracked: Tracked, error: str) -> None:
        self._release(tracked)
        tracked.attempts += 1
        delay = min(MAX_BACKOFF, self.daemon.interval * 2 ** (tracked.attempts - 1))
        tracked.next_attempt = time.monotonic() + delay
        tracked.last_error = error
        tracked.set_status("failed", f"attempt {tracked.attempts}; next in {delay:.0f}s")
        log.warning("attach to PID %d failed (attempt %d, next in %.0fs): %s",
                    tracked.facts.pid, tracked.attempts, delay, error)  # fmt: skip

    def _release(self, tracked: Tracked) -> None:
        if tracked.listener is not None:
            tracked.listener.close()
            tracked.listener = None
        if tracked.rendezvous is not None:
            tracked.rendezvous.remove()
            tracked.rendezvous = None

    async def shutdown(self) -> None:
        """Detach from every process (they flush), then flush and close every output."""
        for task in list(self._attaching):
            await asyncio.wait([task], timeout=self.daemon.attach_timeout + 15)
        for connection in list(self.hub.connections):
            connection.stop("daemon stopping")
        if self.hub.connections:
            log.info("detaching from %d process(es)", len(self.hub.connections))
        await self.hub.wait_idle(10.0)
        for tracked in self.tracked.values():
            self._release(tracked)
        await self.http.stop()
        await asyncio.to_thread(self._close_sinks)

    def _close_sinks(self) -> None:
        for sink in self.sinks:
            sink.flush(self.settings.bsp_export_timeout)
            sink.shutdown()

    # -- what the hub tells us ----------------------------------------------------------

    def _on_notice(self, notice: Notice) -> None:
        tracked = self._by_pid(notice.pid)
        if notice.kind == "warning":
            log.warning("%s", notice.message)
        elif tracked is None:
            if notice.kind in ("agent_error", "protocol_error"):
                log.warning("PID %d: %s", notice.pid, notice.message)
        elif notice.kind == "started":
            tracked.confirmed.set()
        elif notice.kind == "agent_error":
            tracked.agent_error = notice.message
            tracked.confirmed.set()
        elif notice.kind in ("ended", "lost"):
            self._release(tracked)
            tracked.attached_at = None
            if tracked.exited_at is None:
                # Still running: the agent stopped (detached, orphaned). Attach again soon.
                tracked.set_status("selected", f"agent ended ({notice.message}); re-attaching")
                tracked.next_attempt = time.monotonic() + self.daemon.interval
            log.info("PID %d: agent %s (%s)", notice.pid, notice.kind, notice.message)
        elif notice.kind == "dropped":
            log.warning("PID %d: %s", notice.pid, notice.message)

    def _by_pid(self, pid: int) -> Tracked | None:
        for tracked in self.tracked.values():
            if tracked.facts.pid == pid and tracked.exited_at is None:
                return tracked
        return None

    def _setup_for(self, pid: int) -> ProcessSetup:
        """For the hub: what the agent in `pid` does (its table's settings, else the
        daemon's), the rules that name its spans, and its container and pod."""
        tracked = self._by_pid(pid)
        own = tracked.table.settings if tracked is not None and tracked.table else None
        settings = own if own is not None else self.settings
        agent = (
            agent_settings_from(own, orphan_timeout=self.daemon.orphan_timeout)
            if own is not None
            else self.hub.agent_settings
        )
        return ProcessSetup(agent, RuleBook(list(settings.rules)), self._resource_for(tracked))

    def _resource_for(self, tracked: Tracked | None) -> dict[str, str]:
        if tracked is None:
            return {}
        attributes: dict[str, str] = {}
        if tracked.facts.container_id:
            attributes["container.id"] = tracked.facts.container_id
        if tracked.pod is not None:
            attributes.update(tracked.pod.resource(self.daemon.node_name))
        elif self.daemon.node_name:
            attributes["k8s.node.name"] = self.daemon.node_name
        attributes["service.name.default"] = tracked.service
        return attributes

    def _warn(self, message: str) -> None:
        log.warning("%s", message)

    # -- what we tell the world ---------------------------------------------------------

    def _attached_count(self) -> int:
        return sum(t.status in ("attaching", "attached") for t in self.tracked.values())

    def problems(self) -> list[str]:
        """Why we are not ready (empty: ready): for /readyz and the logs."""
        problems = []
        if self.scans == 0:
            problems.append("starting: no scan done yet")
        if self.pods.problem:
            problems.append(self.pods.problem)
        access = check_ptrace(os.getpid())
        if access.ptrace_scope == 3:
            problems.append("ptrace is disabled on this node (kernel.yama.ptrace_scope=3)")
        elif not access.has_cap_sys_ptrace:
            problems.append(
                "ptrace is not allowed: CAP_SYS_PTRACE is missing (Kubernetes: add it to the "
                "container's capabilities and set hostPID: true)"
            )
        return problems

    def processes(self) -> list[dict[str, Any]]:
        """Every process seen, for /api/processes (and `async-inspect ps`)."""
        return [self._describe(t) for t in sorted(self.tracked.values(), key=lambda t: t.facts.pid)]

    def _describe(self, tracked: Tracked) -> dict[str, Any]:
        facts, target = tracked.facts, tracked.facts.target
        described: dict[str, Any] = {
            "pid": facts.pid,
            "status": tracked.status,
            "reason": tracked.reason,
            "since": tracked.since,
            "service": tracked.service,
            "command": facts.command[:300],
            "python": target.version_str if target is not None else None,
            "container_id": facts.container_id,
            "attached_at": tracked.attached_at,
            "attempts": tracked.attempts,
            "last_error": tracked.last_error,
            "settings": dict(tracked.table.overrides) if tracked.table else {},
        }
        if tracked.pod is not None:
            described["pod"] = {"name": tracked.pod.name, "namespace": tracked.pod.namespace,
                                "container": tracked.pod.container}  # fmt: skip
        return described


def _service_of(facts: ProcessFacts, pod: PodInfo | None) -> str:
    """The service name we expect: its own OTEL_SERVICE_NAME, the pod's app label or
    container, else the program."""
    own = facts.environ.get("OTEL_SERVICE_NAME")
    if own:
        return own
    if pod is not None:
        labels = pod.labels
        return labels.get("app.kubernetes.io/name") or labels.get("app") or pod.container
    for part in facts.cmdline[1:]:
        if not part.startswith("-"):
            base = os.path.basename(part)
            return base.removesuffix(".py") if base != "__main__.py" else facts.name
    return facts.name


NoticeCallback = Callable[[Notice], None]
