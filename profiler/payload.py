"""What the host sends into a target: the bootstrap's source and the agent's modules.

Runs on the host. The agent travels as source text over the collector socket, so the
target needs nothing on its filesystem and always runs the agent version of this host.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from .agent.settings import AgentSettings

__all__ = ["BOOTSTRAP_PATH", "SITECUSTOMIZE_DIR", "agent_modules", "bootstrap_source", "payload"]

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


def payload(settings: AgentSettings) -> dict[str, object]:
    """The PAYLOAD frame body answering a bootstrap's BOOT frame."""
    return {"modules": agent_modules(), "settings": settings.to_wire()}
