"""The compiled callbacks as shipped: one binary for 3.12+, sent by the collector with the
agent, loaded in a target from those bytes (memory, else the socket folder), and a silent
fallback to the pure-Python callbacks whenever it cannot be used."""

from __future__ import annotations

import json
import marshal
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from profiler.agent import accelerator
from profiler.agent import spans as S
from profiler.agent.codefilter import CodeFilter
from profiler.agent.settings import ACCELERATOR_ENV, AgentSettings
from profiler.agent.tracker import Tracker
from profiler.payload import accelerator_binary, agent_modules, payload
from tests.conftest import INTERPRETERS, interpreter_params

COMPILED, WHY = accelerator.available()
needs_compiled = pytest.mark.skipif(not COMPILED, reason=f"no compiled callbacks: {WHY}")
BOOTSTRAP = Path("profiler/agent/bootstrap.py").resolve()


@needs_compiled
def test_a_stale_or_mismatched_binary_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a span layout the binary was not compiled for
    monkeypatch.setattr(S, "FIELDS", 27)
    tracker, why = accelerator.new_tracker(AgentSettings(), CodeFilter(AgentSettings()), 5)
    # THEN the pure-Python tracker runs, and says why
    assert type(tracker) is Tracker
    assert "span layout changed: SPAN_LEN" in why


def test_settings_can_turn_it_off() -> None:
    settings = AgentSettings(accelerator=False)
    tracker, why = accelerator.new_tracker(settings, CodeFilter(settings), 5)
    assert type(tracker) is Tracker and ACCELERATOR_ENV in why


# -- what the collector ships ---------------------------------------------------------------


@needs_compiled
def test_payload_ships_the_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ACCELERATOR_ENV, raising=False)
    body = payload(AgentSettings())
    binary = accelerator_binary()
    assert binary is not None and body["accelerator"] == {"path": binary[0], "data": binary[1]}
    assert binary[0].endswith(".abi3.so")
    assert len(marshal.dumps(body)) < 4 * 1024 * 1024  # far below the frame limit


def test_payload_says_why_when_turned_off_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ACCELERATOR_ENV, "0")
    body = payload(AgentSettings())
    assert body["accelerator"] == {"reason": f"disabled by {ACCELERATOR_ENV}=0 on the host"}
    settings = body["settings"]
    assert isinstance(settings, dict) and settings["accelerator"] is False


# -- loading in a target, on every Python ---------------------------------------------------

# Runs in a fresh interpreter: the bootstrap loads the agent from the payload (as in a
# target), then a traced workload runs; prints what the agent reports and the spans made.
PROBE = """
import asyncio, json, marshal, os, sys
body = marshal.loads(sys.stdin.buffer.read())
if os.environ.get("NO_MEMFD"):
    del os.memfd_create
ns = {"__name__": "boot"}
exec(open(BOOTSTRAP).read(), ns)
agent = ns["_load"](body["modules"], body["accelerator"], ADDRESS)
accel = sys.modules["_async_inspect.agent.accelerator"]
from_ = getattr(sys.modules.get("_async_inspect.agent._accel"), "__spec__", None)
settings = accel.AgentSettings()
tracker, why = accel.new_tracker(settings, accel.CodeFilter(settings), 2)
monitoring = sys.modules["_async_inspect.agent.monitoring"]
sys.monitoring.use_tool_id(2, "probe")
installation = monitoring.Installation(2, tracker)
installation.install()

async def leaf():
    await asyncio.sleep(0)

async def renamed():
    asyncio.current_task().set_name("renamed")
    await asyncio.sleep(0)

class OwnName(asyncio.Task):
    def get_name(self):
        return "own-" + super().get_name()

async def main():
    await leaf()
    await asyncio.create_task(leaf())
    tasks = [asyncio.create_task(leaf()) for _ in range(3)]
    tasks += [asyncio.create_task(leaf(), name="given"), asyncio.create_task(renamed())]
    tasks.append(OwnName(leaf()))
    await asyncio.gather(*tasks)
    return [task.get_name() for task in tasks]

app_names = asyncio.run(main())
installation.remove()
wire = sys.modules["_async_inspect.wire"]
records = map(sys.modules["_async_inspect.agent.spans"].to_wire, tracker.finished)
names = [wire.task_name(r[wire.SPAN_TASK_NAME]) for r in records if r[wire.SPAN_TASK_NAME]]
print(json.dumps({
    "app_names": app_names,
    "names": names,
    "name_at": getattr(getattr(tracker, "_hooks", None), "task_name_at", None),
    "accelerated": type(tracker).__name__ == "AcceleratedTracker",
    "why": why,
    "origin": getattr(from_, "origin", None),
    "spans": len(tracker.finished),
    "errors": tracker.internal_errors,
    "files": sorted(os.listdir(os.path.dirname(ADDRESS))) if ADDRESS else [],
}))
"""


def probe(python: str, accel: dict[str, Any] | None, tmp_path: Path, **env: str) -> dict[str, Any]:
    address = str(tmp_path / "collector.sock")
    script = PROBE.replace("BOOTSTRAP", repr(str(BOOTSTRAP))).replace("ADDRESS", repr(address))
    body = {"modules": agent_modules(), "accelerator": accel}
    result = subprocess.run(
        [python, "-c", script],
        input=marshal.dumps(body),
        capture_output=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def shipped() -> dict[str, Any]:
    binary = accelerator_binary()
    assert binary is not None
    return {"path": binary[0], "data": binary[1]}


@needs_compiled
@pytest.mark.parametrize("version", interpreter_params())
def test_one_binary_serves_every_python(version: str, tmp_path: Path) -> None:
    # GIVEN the binary this host built, shipped to a target of each CPython version
    answer = probe(INTERPRETERS[version], shipped(), tmp_path)
    # THEN it loads from the host's own file (same bytes at the same path) and traces
    assert answer["accelerated"], answer["why"]
    assert answer["origin"] == shipped()["path"]
    assert answer["spans"] == 9 and answer["errors"] == 0
    # AND a task's name is the one the app sees: a default name is read where the task
    # keeps it (learnt from the first one named), not formatted by a get_name() call
    assert answer["name_at"] > 0
    assert set(answer["app_names"]) <= set(answer["names"])
    assert answer["app_names"][-3:] == ["given", "renamed", answer["app_names"][-1]]
    assert answer["app_names"][-1].startswith("own-Task-")


@needs_compiled
def test_a_target_that_sees_other_files_loads_it_from_memory(tmp_path: Path) -> None:
    # GIVEN a target where the host's path does not exist (another mount namespace)
    accel = {**shipped(), "path": "/nonexistent/_accel.abi3.so"}
    answer = probe(INTERPRETERS[min(INTERPRETERS)], accel, tmp_path)
    # THEN the bytes are mapped from an anonymous memory file: nothing on any disk
    assert answer["accelerated"], answer["why"]
    assert answer["origin"].startswith("/proc/self/fd/")
    assert answer["files"] == [] and answer["spans"] == 9


@needs_compiled
def test_without_memfd_it_uses_the_socket_folder_and_removes_the_file(tmp_path: Path) -> None:
    accel = {**shipped(), "path": ""}
    answer = probe(INTERPRETERS[min(INTERPRETERS)], accel, tmp_path, NO_MEMFD="1")
    assert answer["accelerated"], answer["why"]
    assert answer["origin"].startswith(str(tmp_path))
    assert answer["files"] == []  # mapped, then deleted


def test_a_binary_the_target_cannot_load_means_pure_python(tmp_path: Path) -> None:
    # GIVEN bytes that are no shared object for this machine (another architecture, libc...)
    accel = {"path": "", "data": b"\x7fELF" + b"\0" * 4096}
    answer = probe(INTERPRETERS[min(INTERPRETERS)], accel, tmp_path)
    # THEN the agent runs its pure-Python callbacks, says why, and traces as well
    assert not answer["accelerated"]
    assert "memfd" in answer["why"] and "socket folder" in answer["why"]
    assert answer["spans"] == 9 and answer["errors"] == 0 and answer["files"] == []


def test_nothing_shipped_or_turned_off_in_the_target(tmp_path: Path) -> None:
    python = INTERPRETERS[min(INTERPRETERS)]
    answer = probe(python, {"reason": "not built on the host"}, tmp_path)
    assert not answer["accelerated"] and "not built on the host" in answer["why"]
    if COMPILED:
        answer = probe(python, shipped(), tmp_path, **{ACCELERATOR_ENV: "0"})
        assert not answer["accelerated"] and answer["origin"] is None
        assert f"disabled by {ACCELERATOR_ENV}=0" in answer["why"]


def test_agent_modules_do_not_ship_sources_of_the_binary() -> None:
    assert all(not name.endswith(("_accel", "csrc")) for name in agent_modules())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
