"""What the CLI says while it collects: one status line per event, on stderr."""

from __future__ import annotations

import sys
from typing import TextIO

from collector.ingest import Notice
from collector.service import Summary
from collector.settings import Settings

__all__ = ["Reporter"]


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
            self.say(f"observing PID {notice.pid} (Python {python}, service {service})")
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
            self.error(f"{line}; {summary.lost} of them never reached the endpoint")
        elif not summary.flushed:
            self.error(f"{line}; some outputs could not be flushed (see warnings above)")
        else:
            self.say(line)
