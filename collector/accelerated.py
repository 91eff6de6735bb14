"""The collector's compiled helpers (csrc/encoder.c), when built and not disabled.

    SpanWriter      otlp_encoder's common span, written in C byte for byte as in Python
    check_spans     wire._check_span over a whole SPANS body

Optional, like the agent's compiled callbacks: `pip install .` builds them when a C compiler
is there; without them, or with ASYNC_INSPECT_ACCELERATOR=0, Python does it all. Loading
this module imports no protobuf (the ingest path uses it whatever the sinks are).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any, Final

from profiler import wire
from profiler.agent.settings import ACCELERATOR_ENV, accelerator_disabled

__all__ = ["compiled", "module", "span_checker", "wire_layout"]

ABI_VERSION: Final = 1  # what _encoder.ABI_VERSION must be


def _load() -> tuple[ModuleType | None, str]:
    if accelerator_disabled(os.environ):
        return None, f"disabled by {ACCELERATOR_ENV}=0"
    try:
        from . import _encoder  # type: ignore[attr-defined]
    except ImportError as exc:  # not built: Python does it all
        return None, f"not loaded: {exc}"
    version = getattr(_encoder, "ABI_VERSION", None)
    if version != ABI_VERSION:
        return None, f"stale binary (ABI {version}, this collector needs {ABI_VERSION})"
    return _encoder, "compiled span writer"


_MODULE, _DETAIL = _load()


def compiled() -> tuple[bool, str]:
    """(whether the compiled helpers loaded, why or why not)."""
    return _MODULE is not None, _DETAIL


def module() -> Any:
    """The compiled module, or None."""
    return _MODULE


def wire_layout() -> dict[str, int]:
    """wire's SPAN_* positions, which the compiled code checks against its own."""
    return {name: getattr(wire, name) for name in dir(wire) if name.startswith("SPAN_")}


def span_checker() -> Callable[[list[Any]], int] | None:
    """wire._check_span over a whole SPANS body, compiled (for wire.FrameDecoder), or None."""
    if _MODULE is None:
        return None
    _MODULE.check_layout(wire_layout())
    checker: Callable[[list[Any]], int] = functools.partial(_MODULE.check_spans, wire.STATE_NAMES)
    return checker
