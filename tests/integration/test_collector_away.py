"""The collector goes away and comes back: the app runs on, the agent drops and counts what it
could not ship, reconnects by itself, and the drop count reaches the user."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.ingest import Notice, SessionHub
from collector.session import ResourceSettings
from profiler.agent.settings import AgentSettings
from profiler.launch import launch_environment
from tests.conftest import INTERPRETERS

APP = """
import asyncio, sys, time

async def tick():
    await asyncio.sleep(0.005)

async def main():
    deadline = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < deadline:
        await tick()
    print("done", flush=True)

asyncio.run(main())
"""


class Collector:
    """A SessionHub on a Unix socket, run on its own loop thread; can stop and start again."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.notices: list[Notice] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.hub = SessionHub(
            [], AgentSettings(ship_interval=0.2), ResourceSettings(), "tok", self.notices.append
        )
        self.server: asyncio.AbstractServer | None = None

    def _run(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def start(self) -> None:
        async def serve() -> None:
            self.server = await asyncio.start_unix_server(self.hub.handle, path=self.path)

        self._run(serve())

    def stop(self) -> None:
        async def close() -> None:
            assert self.server is not None
            self.server.close()
            for connection in list(self.hub.connections):
                connection.writer.close()
            await asyncio.sleep(0.1)
            with contextlib.suppress(FileNotFoundError):  # 3.13+ servers remove it themselves
                os.unlink(self.path)

        self._run(close())

    def wait(self, predicate: object, timeout: float = 15.0) -> list[Notice]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.notices):  # type: ignore[operator]
                return self.notices
            time.sleep(0.05)
        raise AssertionError(f"notices never matched: {self.notices}")

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    server = Collector(str(tmp_path / "agent.sock"))
    yield server
    server.close()


def test_the_drop_count_reaches_the_user_once_the_collector_is_back(
    collector: Collector, tmp_path: Path
) -> None:
    # GIVEN an app under the agent, reporting to a collector
    collector.start()
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = launch_environment(os.environ, collector.path, "tok")
    process = subprocess.Popen(
        [INTERPRETERS[min(INTERPRETERS)], str(app), "6"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        collector.wait(lambda n: any(x.kind == "started" for x in n))
        # WHEN the collector goes away for two seconds
        collector.stop()
        time.sleep(2.0)
        assert process.poll() is None  # the app runs on
        collector.start()
        # THEN the agent reconnects by itself and says what it could not ship
        notices = collector.wait(lambda n: any(x.kind == "dropped" for x in n))
        assert any(x.kind == "started" and x.message == "reconnected" for x in notices)
        dropped = next(x for x in notices if x.kind == "dropped")
        assert "collector_unavailable" in dropped.message
        count = int(dropped.message.split("records: ")[1].split(" ")[0])
        assert count > 50  # ~200 ticks a second were finished while it was away
        # AND the app finished normally, its exit unaffected
        assert process.stdout is not None and process.stdout.readline() == "done\n"
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
