"""Fixtures of the integration tests: probe_app targets (probes.py), node-daemon
"containers" and daemons (nodes.py), each stopped at the end of its test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.conftest import INTERPRETERS
from tests.integration.nodes import Container, Daemon
from tests.integration.probes import Target


@pytest.fixture
def containers() -> Iterator[Callable[..., Container]]:
    started: list[Container] = []

    def start(python: str | None = None, **env: str) -> Container:
        container = Container(python or INTERPRETERS[min(INTERPRETERS)], env)
        started.append(container)
        return container

    yield start
    for container in started:
        container.stop()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
        daemon.log.unlink(missing_ok=True)


@pytest.fixture
def targets() -> Iterator[list[Target]]:
    started: list[Target] = []
    yield started
    for target in started:
        target.stop()
