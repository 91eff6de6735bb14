"""One observed process as the collector knows it: its facts, clock, code table and ids."""

from __future__ import annotations

import secrets
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.resources import Resource

from profiler.agent.rules import OVERFLOW, RuleBook

__all__ = ["CodeInfo", "ProcessSession", "ResourceSettings", "SpanNames"]

_MASK64 = (1 << 64) - 1
_MASK128 = (1 << 128) - 1
_MIX64 = 0x9E3779B97F4A7C15  # odd, so local id -> span id is a bijection (ids never collide)
_MIX128 = 0x9E3779B97F4A7C15F39CC0605CEDC835


@dataclass(frozen=True)
class CodeInfo:
    """A traced coroutine function, from the agent's CODES frames (and the rule for it)."""

    qualname: str
    filename: str
    lineno: int
    module: str
    renamed: str | None = None  # a rule's `name`
    attributes: tuple[tuple[str, str | int | float | bool], ...] = ()  # a rule's constants

    @property
    def name(self) -> str:
        """The function's own name (the last part of its qualified name)."""
        return self.qualname.rsplit(".", 1)[-1]

    @property
    def location(self) -> str:
        """`file:line` of the definition."""
        return f"{self.filename}:{self.lineno}"


@dataclass(frozen=True)
class ResourceSettings:
    """Resource choices made by the user (flag > environment > config file), which win over
    what the target's own environment says."""

    service_name: str | None = None
    service_version: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)


class SpanNames:
    """Distinct span names per service, capped: beyond `limit`, a name is `__overflow__`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._admitted: dict[str, set[str]] = {}

    def admit(self, service: str, name: str) -> str:
        """`name`, or the overflow name once the service has `limit` others."""
        admitted = self._admitted.setdefault(service, set())
        if name in admitted:
            return name
        if len(admitted) >= self.limit:
            return OVERFLOW
        admitted.add(name)
        return name


def parse_resource_attributes(text: str) -> dict[str, str]:
    """`k=v,k2=v2` as in OTEL_RESOURCE_ATTRIBUTES; malformed items are skipped."""
    result: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            result[key.strip()] = value.strip()
    return result


class ProcessSession:
    """State for one agent connection; `span_id`/`trace_id` map the agent's local ids."""

    def __init__(
        self,
        hello: dict[str, Any],
        settings: ResourceSettings,
        peer_pid: int = 0,
        rules: RuleBook | None = None,
        names: SpanNames | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.hello = hello
        self.extra = dict(extra or {})  # what the node daemon knows: container, pod
        self.rules = rules if rules is not None else RuleBook([])
        self.names = names if names is not None else SpanNames(1000)
        self.own_pid = int(hello.get("pid", 0))  # as the process sees itself
        self.pid = peer_pid or self.own_pid  # as this host sees it
        self.codes: dict[int, CodeInfo] = {}
        self.stats: dict[str, Any] = {}
        self.dropped_reported: dict[str, int] = {}
        self.spans_received = 0
        self.connected_at = time.time()
        wall, perf = hello.get("clock", (time.time_ns(), 0))
        self._clock_offset = int(wall) - int(perf)
        self._salt64 = secrets.randbits(64)
        self._salt128 = secrets.randbits(128)
        self.service_name = self._service_name(settings)
        self.resource = self._resource(settings)

    def wall_ns(self, perf_ns: int) -> int:
        """Wall-clock ns of an agent perf_counter_ns reading."""
        return perf_ns + self._clock_offset

    def span_id(self, local: int) -> int:
        """64-bit OpenTelemetry span id for an agent-local span id (never 0)."""
        return ((local * _MIX64) ^ self._salt64) & _MASK64 or 1

    def trace_id(self, local: int) -> int:
        """128-bit trace id for an agent-local trace key (never 0)."""
        return ((local * _MIX128) ^ self._salt128) & _MASK128 or 1

    def id_keys(self) -> tuple[int, int, int, int]:
        """(mix64, salt64, mix128, salt128): span_id and trace_id, for a compiled writer."""
        return _MIX64, self._salt64, _MIX128, self._salt128

    def add_codes(self, entries: list[tuple[int, str, str, int, str]]) -> None:
        """Record CODES entries, with what the rules say of each function."""
        for code_id, qualname, filename, lineno, module in entries:
            rule = self.rules.find(module, qualname)
            renamed = rule.name if rule is not None else None
            constants = tuple(rule.static_attributes.items()) if rule is not None else ()
            self.codes[code_id] = CodeInfo(qualname, filename, lineno, module, renamed, constants)

    def span_name(self, code_id: int) -> str:
        """The span name for a function: the rule's name or the qualified name, capped."""
        code = self.codes.get(code_id)
        if code is None:
            return f"code-{code_id}"
        return self.names.admit(self.service_name, code.renamed or code.qualname)

    def _service_name(self, settings: ResourceSettings) -> str:
        env = self.hello.get("env", {})
        target_attrs = parse_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
        return (
            settings.service_name
            or env.get("OTEL_SERVICE_NAME")
            or target_attrs.get("service.name")
            or self.extra.get("service.name.default")
            or str(self.hello.get("program") or "python")
        )

    def _resource(self, settings: ResourceSettings) -> Resource:
        hello = self.hello
        attributes: dict[str, str | int] = {}
        attributes.update(
            parse_resource_attributes(hello.get("env", {}).get("OTEL_RESOURCE_ATTRIBUTES", ""))
        )
        attributes.update(settings.attributes)
        attributes.update({k: v for k, v in self.extra.items() if k != "service.name.default"})
        attributes.update(
            {
                "service.name": self.service_name,
                "process.pid": self.pid,
                "process.parent_pid": int(hello.get("ppid", 0)),
                "process.executable.path": str(hello.get("executable", "")),
                "process.command_line": shlex.join(str(a) for a in hello.get("argv", [])),
                "process.runtime.name": "CPython"
                if hello.get("implementation") == "cpython"
                else str(hello.get("implementation", "")),
                "process.runtime.version": str(hello.get("python", "")),
                "host.name": str(hello.get("hostname", "")),
                "telemetry.sdk.name": "async-inspect",
                "telemetry.sdk.language": "python",
                "telemetry.sdk.version": str(hello.get("agent_version", "")),
            }
        )
        if settings.service_version:
            attributes["service.version"] = settings.service_version
        if self.own_pid != self.pid:  # in another PID namespace (a container)
            attributes["process.pid.in_namespace"] = self.own_pid
        return Resource(attributes)
