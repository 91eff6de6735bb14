"""What async-inspect said on stderr during one run: drops, its span count, anything odd."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CliLog", "read_cli_log"]

SUMMARY = re.compile(r"async-inspect: (\d+) spans from (\d+) process\(es\) exported")
DROPPED = re.compile(r"agent dropped records: (.*)$")
DROP_ITEM = re.compile(r"(\d+) \(([^)]+)\)")
QUEUE_FULL = "Queue full, dropping"  # opentelemetry-sdk BatchSpanProcessor, once per span
OBSERVING = "async-inspect: observing PID"
KEEP = 5  # distinct unexpected lines kept per run


@dataclass
class CliLog:
    """Parsed stderr of one async-inspect CLI (the target's own stderr is mixed in)."""

    observed: bool = False  # an agent reported in ("observing PID ...")
    spans_handed: int | None = None  # the CLI's closing line: spans given to its outputs
    agent_dropped: dict[str, int] = field(default_factory=dict)
    queue_full: int = 0  # "Queue full" warnings of the CLI's batch processor (not one per span)
    unexpected: list[str] = field(default_factory=list)  # first distinct other lines
    unexpected_count: int = 0


def read_cli_log(path: Path) -> CliLog:
    """Stream `path` (it can be large when the exporter warns per span) into a CliLog."""
    log = CliLog()
    try:
        with open(path, errors="replace") as stream:
            for line in stream:
                _take(log, line.rstrip("\n"))
    except OSError:
        pass
    return log


def _take(log: CliLog, line: str) -> None:
    if line.startswith(OBSERVING):
        log.observed = True
    elif QUEUE_FULL in line:
        log.queue_full += 1
    elif match := SUMMARY.search(line):
        log.spans_handed = int(match.group(1))
    elif match := DROPPED.search(line):
        for count, reason in DROP_ITEM.findall(match.group(1)):
            log.agent_dropped[reason] = log.agent_dropped.get(reason, 0) + int(count)
    elif line.strip():
        log.unexpected_count += 1
        if line not in log.unexpected and len(log.unexpected) < KEEP:
            log.unexpected.append(line)
