"""The node daemon's test fixtures' parts: "containers" (a probe_app in mount + PID
namespaces via unshare, each in its own cgroup so it has a container id) and the daemon
itself as a subprocess with its API on a free port."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import CLI
from tests.integration.probes import IN_NAMESPACES, Target

CGROUP = Path("/sys/fs/cgroup/pids")
NEEDS_NAMESPACES = [
    pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) missing"),
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and cgroups need root"),
    pytest.mark.skipif(not CGROUP.is_dir(), reason="no cgroup v1 pids hierarchy to give ids"),
]


class Container(Target):
    """A probe_app in its own mount+PID namespaces, private /tmp, and a cgroup named by a
    64-hex container id (as docker/containerd name theirs). `pid` is the app's, as the host
    sees it."""

    def __init__(self, python: str, env: dict[str, str]) -> None:
        self.id = secrets.token_hex(32)
        self.cgroup = CGROUP / "async-inspect-test" / self.id
        self.cgroup.mkdir(parents=True)
        enter = f'echo $$ > {self.cgroup}/cgroup.procs && exec "$@"'
        super().__init__(python, "idle", prefix=["sh", "-c", enter, "sh", *IN_NAMESPACES], **env)
        self.pid = next(
            child.pid
            for child in psutil.Process(self.process.pid).children(recursive=True)
            if "probe_app" in " ".join(child.cmdline())
        )

    def stop(self) -> None:
        super().stop()  # unshare --kill-child takes the app with it
        deadline = time.monotonic() + 10
        while psutil.pid_exists(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            self.cgroup.rmdir()
        except OSError:
            pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Daemon:
    """`async-inspect collector` as a subprocess, with its API on a free port; `prefix`
    runs it under another command (setpriv, to take a capability away)."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()
        self.log = Path(f"/tmp/async-inspect-daemon-{self.port}.log")
        self.process = subprocess.Popen(
            [
                *prefix,
                *CLI,
                "collector",
                "--metrics-port",
                str(self.port),
                "--metrics-address",
                "127.0.0.1",
                "--interval",
                "0.5",
                "--no-tree",
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
            env={**os.environ, **(env or {})},
        )

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError:
            return 0, ""

    def processes(self) -> dict[int, dict[str, Any]]:
        status, body = self.get("/api/processes")
        return {p["pid"]: p for p in json.loads(body)["processes"]} if status == 200 else {}

    def wait(self, predicate: Callable[[dict[int, dict[str, Any]]], bool], timeout: float = 20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            processes = self.processes()
            if processes and predicate(processes):
                return processes
            time.sleep(0.2)
        raise AssertionError(f"daemon state never matched: {self.processes()}\n{self.output()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""
