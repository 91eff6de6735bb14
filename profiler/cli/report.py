"""What the CLI says while it collects: one status line per event, on stderr."""

from __future__ import annotations

import sys
from typing import TextIO

from collector.ingest import Notice
from collector.service import Summary
from collector.settings import Settings

__all__ = ["Reporter", "callbacks_note"]


def callbacks_note(hello: dict[str, object]) -> str:
    """`accelerated`, or why the agent in a process runs its pure-Python callbacks."""
    if "accelerator" not in hello:  # an agent from before the accelerator
        return "pure Python"
    if hello["accelerator"]:
        return "accelerated"
    detail = str(hello.get("accelerator_detail") or "")
    return "pure Python: " + (detail if len(detail) <= 120 else detail[:117] + "...")


# How the closing line words each reason the OTLP exporter counts spans as lost.
_REASONS = {
    "queue_full": "dropped because the export queue was full",
    "export_failed": "in exports that failed after retries",
    "rejected": "rejected by the endpoint",
    "shutdown": "still queued at exit",
}


class Reporter:
    """Prints notices as `async-inspect: ...` lines (errors even when quiet)."""

    def __init__(self, quiet: bool, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.agent_errors: list[str] = []

    def say(self, message: str) -> None:
        """One status line (suppressed by --quiet)."""
        if not self.quiet:
            self.error(message)

    def error(self, message: str) -> None:
        """One line that is always shown."""
        self.stream.write(f"async-inspect: {message}\n")
        self.stream.flush()

    def notice(self, notice: Notice) -> None:
        """React to a collector notice."""
        if notice.kind == "started":
            session = notice.session
            python = session.hello.get("python", "?") if session is not None else "?"
            service = session.service_name if session is not None else "?"
            note = callbacks_note(session.hello) if session is not None else "?"
            self.say(f"observing PID {notice.pid} (Python {python}, service {service}, {note})")
        elif notice.kind in ("agent_error", "protocol_error"):
            self.agent_errors.append(notice.message)
            self.error(f"PID {notice.pid}: {notice.message}")
        elif notice.kind == "warning":
            self.error(f"warning: {notice.message}")
        elif notice.kind == "dropped":
            self.error(f"PID {notice.pid}: {notice.message}")
        elif notice.kind == "lost":
            self.say(f"PID {notice.pid} went away without saying goodbye (killed?)")

    def summary(self, summary: Summary, settings: Settings) -> None:
        """The closing line."""
        line = f"{summary.spans} spans from {summary.processes} process(es)"
        if settings.endpoint:
            line += f" exported to {settings.endpoint}"
        if settings.output:
            line += f", written to {settings.output}"
        if summary.malformed:
            line += f"; {summary.malformed} malformed records skipped"
        if summary.lost:
            reasons = ", ".join(
                f"{count} {_REASONS.get(reason, reason)}"
                for reason, count in summary.lost_by_reason
            )
            line += f"; {summary.lost} of them never reached the endpoint"
            self.error(f"{line} ({reasons})" if reasons else line)
        elif not summary.flushed:
            self.error(f"{line}; some outputs could not be flushed (see warnings above)")
        else:
            self.say(line)
