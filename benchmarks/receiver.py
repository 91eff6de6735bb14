"""The OTLP/gRPC receiver process (targets/otlp_sink.py) as the harness sees it."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .procs import BenchError, Child, Children, pinned

__all__ = ["Received", "Receiver"]

SINK = Path(__file__).resolve().parent / "targets" / "otlp_sink.py"
START_TIMEOUT = 30.0
ANSWER_TIMEOUT = 10.0


@dataclass(frozen=True)
class Received:
    """What the receiver got for one service.name."""

    spans: int = 0
    requests: int = 0
    bytes: int = 0


class Receiver:
    """A running otlp_sink.py; `endpoint` is what `--endpoint` gets."""

    def __init__(self, child: Child, port: int) -> None:
        self.child = child
        self.endpoint = f"http://127.0.0.1:{port}"

    @classmethod
    def start(cls, children: Children, cpu: int | None) -> Receiver:
        """Start the receiver (on `cpu`) and wait until it listens."""
        child = children.start("otlp-receiver", pinned(cpu, [sys.executable, str(SINK)]))
        line = child.expect("READY", START_TIMEOUT)
        return cls(child, int(line.split("port=")[1]))

    def received(self, service: str) -> Received:
        """Totals so far for `service`; BenchError if the receiver is gone or silent."""
        if self.child.popen.poll() is not None:
            raise BenchError(f"the OTLP receiver died; stderr:\n{self.child.stderr_tail()}")
        self.child.send("stats")
        counts = json.loads(self.child.expect("{", ANSWER_TIMEOUT))
        return Received(**counts.get(service, {}))
