"""Starting a command under `async-inspect run`: the environment that loads the agent.

Runs on the host. Every Python 3.12+ the command starts (the command itself and its
children) imports our sitecustomize, which connects back and starts the agent before the
app's first line. Nothing is changed on disk and the app's stdio is not touched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .payload import BOOTSTRAP_PATH, SITECUSTOMIZE_DIR

__all__ = ["launch_environment"]


def launch_environment(base: Mapping[str, str], address: str, token: str) -> dict[str, str]:
    """`base` plus what makes Python processes report to the collector at `address`."""
    env = dict(base)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(SITECUSTOMIZE_DIR) + (os.pathsep + existing if existing else "")
    env["ASYNC_INSPECT_ADDRESS"] = address
    env["ASYNC_INSPECT_TOKEN"] = token
    env["ASYNC_INSPECT_BOOTSTRAP"] = str(BOOTSTRAP_PATH)
    return env
