"""The floor: a copy of this work tree whose compiled agent is built with AI_BENCH_FLOOR.

Its callbacks return as soon as they have looked the code up, so it never opens a span;
everything else is a real attach (the events, the task factory, the select() wake hook, the
sender thread, the CLI). The `floor` mode of benchmarks.overhead runs its targets from such a
copy: what it costs is what no bookkeeping can win back (benchmarks/README.md, "The floor").

With AI_BENCH_RECORDS instead (the `records` mode), each event of traced code only appends a
fixed-size record to a ring in the target (benchmarks/README.md, "The records ceiling").

    .venv/bin/python -m benchmarks.floor DEST     # such a copy in DEST (new or empty), kept
    .venv/bin/python -m benchmarks.floor --macro AI_BENCH_RECORDS DEST
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

__all__ = ["MACROS", "build_floor_tree"]

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("profiler", "collector")
MACROS = ("AI_BENCH_FLOOR", "AI_BENCH_RECORDS")  # the benchmark-only builds (hooks.c)
AGENT_LIBRARY = "profiler/agent/_accel"  # the one binary the macro changes


def build_floor_tree(dest: Path, macro: str = "AI_BENCH_FLOOR") -> Path:
    """Copy this tree's packages into `dest` and build its agent's C callbacks there with
    `macro` (one of MACROS; the project's own build, through `pip wheel`). Returns `dest`."""
    if macro not in MACROS:
        raise ValueError(f"{macro}: not one of {', '.join(MACROS)}")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__", "_accel*.so"))  # fmt: skip
    wheels = dest / "wheel"
    env = {**os.environ, "CFLAGS": f"{os.environ.get('CFLAGS', '')} -D{macro}".strip()}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    built = sorted(wheels.glob("*.whl"))
    if done.returncode != 0 or not built:
        raise SystemExit(f"building the {macro} agent failed:\n{done.stderr[-2000:]}")
    with zipfile.ZipFile(built[0]) as wheel:
        libraries = [n for n in wheel.namelist() if n.startswith(AGENT_LIBRARY)]
        if not libraries:
            raise SystemExit(f"building the {macro} agent failed: the wheel has no compiled agent")
        for name in libraries:
            wheel.extract(name, dest)
    shutil.rmtree(wheels)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--macro", choices=MACROS, default=MACROS[0])
    parser.add_argument("dest", type=Path, help="a new or empty directory")
    args = parser.parse_args(argv)
    dest = args.dest
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"{dest}: not empty")
    print(build_floor_tree(dest, args.macro))
    return 0


if __name__ == "__main__":
    sys.exit(main())
