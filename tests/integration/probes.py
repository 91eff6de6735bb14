"""Attach tests' parts: a running probe_app.py target, and an `async-inspect attach` session
whose stderr is read line by line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

from tests.conftest import CLI, TARGETS, outside_tmp

# A command's prefix that runs it in mount and PID namespaces of its own, with a private /tmp:
# a stand-in for a container.
IN_NAMESPACES = ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child",
                 "sh", "-c", 'mount -t tmpfs tmpfs /tmp && exec "$@"', "sh"]  # fmt: skip


class Target:
    """A running probe_app.py."""

    def __init__(self, python: str, mode: str, prefix: list[str] | None = None, **env: str):
        self.process = subprocess.Popen(
            [*(prefix or []), python, str(outside_tmp(TARGETS / "probe_app.py")), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        assert line and line[0] == "ready", (
            self.process.stderr.read() if self.process.stderr else ""
        )
        self.ports = [int(port) for port in line[1:]]
        self.pid = self.process.pid

    def send(self, line: str, port: int | None = None) -> str:
        with socket.create_connection(("127.0.0.1", port or self.ports[0]), timeout=10) as conn:
            conn.sendall(line.encode() + b"\n")
            return conn.makefile().readline().strip()

    def probe(self, port: int | None = None) -> dict[str, object]:
        return dict(json.loads(self.send("probe", port)))

    def alive(self) -> bool:
        return self.process.poll() is None and self.send("x") == "ok"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


class Session:
    """A running `async-inspect attach` (stderr read line by line)."""

    def __init__(
        self,
        pid: int,
        *args: str,
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
    ) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [*(prefix or []), *CLI, "attach", str(pid), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env if env is not None else os.environ.copy(),
        )
        self.lines: list[str] = []

    def wait_for(self, word: str, timeout: float = 20.0) -> float:
        """Seconds from start until a stderr line containing `word`."""
        assert self.process.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            if word in line:
                return time.monotonic() - self.started
        raise AssertionError(f"no {word!r} line; stderr so far: {''.join(self.lines)}")

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C; returns (exit status, rest of stderr)."""
        self.process.send_signal(signal.SIGINT)
        return self.finish()

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        _, rest = self.process.communicate(timeout=timeout)
        return self.process.returncode, "".join(self.lines) + rest
