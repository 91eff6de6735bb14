"""What the host sends into a target: the bootstrap's source, the agent's modules and its
compiled callbacks.

Runs on the host. The agent travels as source text over the collector socket, so the
target needs nothing on its filesystem and always runs the agent version of this host.
The compiled callbacks travel as the bytes of this host's binary (one abi3 binary for every
CPython 3.12+); the bootstrap maps them (see agent/bootstrap.py), or the agent runs the
pure-Python callbacks when it cannot, or when ASYNC_INSPECT_ACCELERATOR=0 here.
"""

from __future__ import annotations

import os
from dataclasses import replace
from functools import cache
from pathlib import Path

from .agent.settings import ACCELERATOR_ENV, AgentSettings, accelerator_disabled

__all__ = [
    "BOOTSTRAP_PATH",
    "SITECUSTOMIZE_DIR",
    "accelerator_binary",
    "agent_modules",
    "bootstrap_source",
    "payload",
]

_PACKAGE_DIR = Path(__file__).resolve().parent
_AGENT_DIR = _PACKAGE_DIR / "agent"
BOOTSTRAP_PATH = _AGENT_DIR / "bootstrap.py"
SITECUSTOMIZE_DIR = _AGENT_DIR / "sitecustomize"
# Files under agent/ that are not modules of the loaded agent: they load it.
_NOT_SHIPPED = {"bootstrap.py"}


@cache
def agent_modules() -> dict[str, tuple[str, bool]]:
    """{name relative to the private package: (source, is_package)} for the agent + wire."""
    modules: dict[str, tuple[str, bool]] = {
        "wire": ((_PACKAGE_DIR / "wire.py").read_text(encoding="utf-8"), False),
        "agent": ((_AGENT_DIR / "__init__.py").read_text(encoding="utf-8"), True),
    }
    for path in sorted(_AGENT_DIR.glob("*.py")):
        if path.name == "__init__.py" or path.name in _NOT_SHIPPED:
            continue
        modules[f"agent.{path.stem}"] = (path.read_text(encoding="utf-8"), False)
    return modules


@cache
def bootstrap_source() -> str:
    """Source text of the bootstrap, executed in the target in a namespace of its own."""
    return BOOTSTRAP_PATH.read_text(encoding="utf-8")


@cache
def accelerator_binary() -> tuple[str, bytes] | None:
    """(path, bytes) of the compiled callbacks built by this installation, if any."""
    for path in [_AGENT_DIR / "_accel.abi3.so", *sorted(_AGENT_DIR.glob("_accel*.so"))]:
        try:
            return str(path), path.read_bytes()
        except OSError:
            continue
    return None


def payload(settings: AgentSettings) -> dict[str, object]:
    """The PAYLOAD frame body answering a bootstrap's BOOT frame."""
    accelerator: dict[str, object]
    if accelerator_disabled(os.environ):
        settings = replace(settings, accelerator=False)
        accelerator = {"reason": f"disabled by {ACCELERATOR_ENV}=0 on the host"}
    elif (binary := accelerator_binary()) is not None:
        accelerator = {"path": binary[0], "data": binary[1]}
    else:
        accelerator = {"reason": "not built on the host (its install had no C compiler)"}
    return {"modules": agent_modules(), "settings": settings.to_wire(), "accelerator": accelerator}
