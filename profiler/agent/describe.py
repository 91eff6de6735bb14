"""How a span says what happened to it: the error it failed with, and what it awaits while
suspended. Standard library only, as all of the agent."""

from __future__ import annotations

import asyncio
import traceback

__all__ = ["CANCELLED", "describe_awaited", "describe_error"]

# What ends a span as cancelled rather than failed.
CANCELLED = (asyncio.CancelledError, GeneratorExit)


def describe_error(exc: BaseException, stack_limit: int) -> tuple[str, str, str]:
    """(type name, message, traceback text; empty for a cancellation) of `exc`."""
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else (f"{kind.__module__}.{kind.__qualname__}")
    )
    try:
        message = str(exc)[:1024]
    except Exception:
        message = "<unprintable>"
    if isinstance(exc, CANCELLED):
        return name, message, ""
    # lookup_lines=False: reading source files here would be I/O on the app's thread.
    frames = traceback.StackSummary.extract(
        traceback.walk_tb(exc.__traceback__), limit=stack_limit, lookup_lines=False
    )
    stack = "".join(frames.format())
    return name, message, f"Traceback (most recent call last):\n{stack}{name}: {message}"


def describe_awaited(value: object) -> str:
    """What a suspended coroutine waits for, as short as possible."""
    if value is None:
        return "yield"  # a bare yield: asyncio.sleep(0) or a custom awaitable
    if isinstance(value, asyncio.Task):
        return "task " + value.get_name()
    return type(value).__qualname__
