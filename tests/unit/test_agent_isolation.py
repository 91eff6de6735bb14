"""The agent runs inside other people's processes: standard library only, private name."""

from __future__ import annotations

import ast
import marshal
import subprocess
import sys
from pathlib import Path

from profiler.payload import agent_modules

AGENT_FILES = [*Path("profiler/agent").rglob("*.py"), Path("profiler/wire.py")]


def test_agent_imports_only_the_standard_library() -> None:
    allowed = set(sys.stdlib_module_names)
    offenders = []
    for path in AGENT_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [
                f"{path}:{node.lineno} {n}"
                for n in names
                if n.split(".")[0] not in allowed | {"__future__"}
            ]
    assert offenders == []


def test_agent_uses_only_relative_imports_of_its_own_code() -> None:
    # Absolute `profiler...` imports would load the target's own `profiler` package.
    for path in AGENT_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert not (node.module or "").startswith("profiler"), f"{path}:{node.lineno}"


def test_payload_holds_every_agent_module_and_no_loader() -> None:
    modules = agent_modules()
    assert modules["agent"][1] is True and modules["wire"][1] is False
    shipped = {name.removeprefix("agent.") for name in modules if name.startswith("agent.")}
    on_disk = {p.stem for p in Path("profiler/agent").glob("*.py")} - {"__init__", "bootstrap"}
    assert shipped == on_disk


def test_agent_loads_under_a_private_name_beside_a_foreign_profiler(tmp_path: Path) -> None:
    # GIVEN a target with its own top-level `profiler` package
    (tmp_path / "profiler").mkdir()
    (tmp_path / "profiler" / "__init__.py").write_text("MINE = True\n")
    script = tmp_path / "check.py"
    script.write_text(
        "import sys, marshal\n"
        "modules = marshal.loads(sys.stdin.buffer.read())\n"
        "ns = {'__name__': 'boot'}\n"
        f"exec(open({str(Path('profiler/agent/bootstrap.py').resolve())!r}).read(), ns)\n"
        "agent = ns['_load'](modules)\n"
        "import profiler\n"
        "private = sorted(m for m in sys.modules if m.startswith('_async'))\n"
        "print(agent.__name__, profiler.MINE, private)\n"
    )
    # WHEN the bootstrap loads the agent from memory
    result = subprocess.run(
        [sys.executable, str(script)],
        input=marshal.dumps(agent_modules()),
        capture_output=True,
        cwd=tmp_path,
        check=True,
    )
    out = result.stdout.decode()
    # THEN it lives under _async_inspect and the app's `profiler` is untouched
    assert out.startswith("_async_inspect.agent True")
    assert "'_async_inspect.wire'" in out and "'_async_inspect.agent.tracker'" in out
