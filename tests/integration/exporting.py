"""What the export tests share (test_export_options.py, test_trace_options.py): the CLI's
`run -q` in an environment without OTEL_* or ASYNC_INSPECT_* variables, and received spans
grouped by trace."""

from __future__ import annotations

import os
import subprocess

from tests.conftest import CLI, INTERPRETERS
from tests.otlp_receiver import ReceivedSpan

__all__ = ["CLEAN_ENV", "PYTHON", "run", "traces"]

PYTHON = INTERPRETERS[min(INTERPRETERS)]
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ASYNC_INSPECT"))}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "run", "-q", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env or CLEAN_ENV,
    )


def traces(spans: list[ReceivedSpan]) -> dict[str, list[ReceivedSpan]]:
    by_trace: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    return by_trace
