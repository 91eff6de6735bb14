"""What the collector tells the agent to do, received once in the PAYLOAD frame."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["ACCELERATOR_ENV", "AgentSettings", "accelerator_disabled"]

ACCELERATOR_ENV = "ASYNC_INSPECT_ACCELERATOR"
"""`0` (or false/no/off) never loads the compiled callbacks: the pure-Python ones run.
Read in the target's environment (so `run` passes it on) and on the host that ships the
agent (so it covers `attach` too)."""


def accelerator_disabled(environ: Mapping[str, str]) -> bool:
    """True if `environ` asks for the pure-Python callbacks."""
    return environ.get(ACCELERATOR_ENV, "").strip().lower() in ("0", "false", "no", "off")


@dataclass(frozen=True)
class AgentSettings:
    """Agent behaviour; every field has a default so an older collector still works."""

    include: tuple[str, ...] = ()
    """Module globs (or `module:qualname` globs) traced even when they are library code."""
    exclude: tuple[str, ...] = ()
    """Module globs (or `module:qualname` globs) never traced; exclude wins over include."""
    max_events: int = 128
    """Events kept per span; further events are counted in `task.events_dropped`."""
    max_open_spans: int = 100_000
    """Live spans tracked at once; beyond it new coroutines are not traced (counted)."""
    buffer_size: int = 16_384
    """Finished spans waiting for the sender; beyond it spans are dropped (counted)."""
    ship_interval: float = 1.0
    """Seconds between shipments to the collector (sooner when the buffer is half full)."""
    batch_size: int = 512
    """Spans per SPANS frame, so no single marshal call holds the GIL for long."""
    split_after: float = 30.0
    """A span started under a parent older than this starts a new trace linked to it."""
    sample_ratio: float = 1.0
    """Probability that a trace root (and so its whole trace) is recorded in full."""
    parent_based: bool = True
    """Follow the sampled flag of an application's own OpenTelemetry parent span."""
    trace_library: bool = False
    """Trace standard library and site-packages coroutines too."""
    stack_limit: int = 32
    """Frames kept in `exception.stacktrace`."""
    rules: tuple[dict[str, Any], ...] = ()
    """Per-function rules (match, sample_rate, exclude, captures), first match wins."""
    max_attribute_values: int = 50
    """Distinct values per captured attribute; beyond it the value is `__overflow__`."""
    accelerator: bool = True
    """Use the compiled callbacks when they load in the target (else pure Python, the same
    spans). False when the host has ASYNC_INSPECT_ACCELERATOR=0, see `profiler.payload`."""
    burst: float = 0.0
    """Seconds each burst records (bursts.py); 0: record all the time."""
    burst_every: float = 0.0
    """Seconds from the start of one burst to the start of the next."""
    orphan_timeout: float = 0.0
    """Detach by itself after the collector has been unreachable this long (0: never).
    An attach session's socket dies with its CLI; a node daemon comes back on restart."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Settings this agent version does not know (sent by a newer collector)."""

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> AgentSettings:
        """Build settings from the PAYLOAD dict; unknown keys go to `extra`."""
        known = {f.name for f in fields(cls)} - {"extra"}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key in known:
                values[key] = tuple(value) if key in ("include", "exclude", "rules") else value
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**values, extra=extra)

    def to_wire(self) -> dict[str, Any]:
        """The PAYLOAD representation (plain data only)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        data["include"] = list(self.include)
        data["exclude"] = list(self.exclude)
        data["rules"] = [dict(rule) for rule in self.rules]
        return data
