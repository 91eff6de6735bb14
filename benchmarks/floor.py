"""The floor: a copy of this work tree whose compiled agent is built with AI_BENCH_FLOOR.

Its callbacks return as soon as they have looked the code up, so it never opens a span;
everything else is a real attach (the events, the task factory, the select() wake hook, the
sender thread, the CLI). The `floor` mode of benchmarks.overhead runs its targets from such a
copy: what it costs is what no bookkeeping can win back (benchmarks/README.md, "The floor").

    .venv/bin/python -m benchmarks.floor DEST     # such a copy in DEST (new or empty), kept
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

__all__ = ["build_floor_tree"]

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("profiler", "collector")
AGENT_LIBRARY = "profiler/agent/_accel"  # the one binary the macro changes


def build_floor_tree(dest: Path) -> Path:
    """Copy this tree's packages into `dest` and build its agent's C callbacks there with
    AI_BENCH_FLOOR (the project's own build, through `pip wheel`). Returns `dest`."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__", "_accel*.so"))  # fmt: skip
    wheels = dest / "wheel"
    env = {**os.environ, "CFLAGS": f"{os.environ.get('CFLAGS', '')} -DAI_BENCH_FLOOR".strip()}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    built = sorted(wheels.glob("*.whl"))
    if done.returncode != 0 or not built:
        raise SystemExit(f"building the floor agent failed:\n{done.stderr[-2000:]}")
    with zipfile.ZipFile(built[0]) as wheel:
        libraries = [n for n in wheel.namelist() if n.startswith(AGENT_LIBRARY)]
        if not libraries:
            raise SystemExit("building the floor agent failed: the wheel has no compiled agent")
        for name in libraries:
            wheel.extract(name, dest)
    shutil.rmtree(wheels)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("dest", type=Path, help="a new or empty directory")
    dest = parser.parse_args(argv).dest
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"{dest}: not empty")
    print(build_floor_tree(dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
