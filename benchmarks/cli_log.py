"""What async-inspect said on stderr during one run: drops, its span count, anything odd."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CliLog", "read_cli_log"]

SUMMARY = re.compile(r"async-inspect: (\d+) spans from (\d+) process\(es\)")
SUMMARY_LOST = re.compile(r"(\d+) of them never reached the endpoint")
DROPPED = re.compile(r"agent dropped records: (.*)$")
DROP_ITEM = re.compile(r"(\d+) \(([^)]+)\)")
# The exporter's queue overflowed: the SDK's own warning, or the CLI's rate-limited one.
QUEUE_FULL = ("Queue full, dropping", "the export queue is full")
# `run` says it is observing a PID; `attach` that it attached (the agent reported either way).
OBSERVING = ("async-inspect: observing PID", "async-inspect: attached to PID")
# An attach session's ordinary end.
SESSION_END = re.compile(r"^async-inspect: (detached from PID \d+|PID \d+ exited)$")
KEEP = 5  # distinct unexpected lines kept per run


@dataclass
class CliLog:
    """Parsed stderr of one async-inspect CLI (the target's own stderr is mixed in)."""

    observed: bool = False  # an agent reported in ("observing PID ...", "attached to PID ...")
    spans_handed: int | None = None  # the CLI's closing line: spans given to its outputs
    spans_lost: int | None = None  # the same line: "N of them never reached the endpoint"
    agent_dropped: dict[str, int] = field(default_factory=dict)
    queue_full: int = 0  # "queue full" warnings of the CLI's exporter (rate-limited, not per span)
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
    elif any(text in line for text in QUEUE_FULL):
        log.queue_full += 1
    elif match := SUMMARY.search(line):
        log.spans_handed = int(match.group(1))
        if lost := SUMMARY_LOST.search(line):
            log.spans_lost = int(lost.group(1))
    elif match := DROPPED.search(line):
        for count, reason in DROP_ITEM.findall(match.group(1)):
            log.agent_dropped[reason] = log.agent_dropped.get(reason, 0) + int(count)
    elif SESSION_END.match(line):
        pass
    elif line.strip():
        log.unexpected_count += 1
        if line not in log.unexpected and len(log.unexpected) < KEEP:
            log.unexpected.append(line)
