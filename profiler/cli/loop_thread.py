"""An asyncio event loop on a daemon thread, for commands whose main thread must stay free
(attach injects on the main thread so Ctrl-C reaches the injector, never the collector)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """`run(coro)` executes a coroutine on the thread's loop and returns its result."""

    def __init__(self, name: str = "async-inspect-collector") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)

    def __enter__(self) -> LoopThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # As asyncio.run does: no task is left pending on a closed loop. A second Ctrl-C, or a
        # task that will not end within 5 s, leaves the rest to the loop's stop below.
        with contextlib.suppress(BaseException):
            self.run(_cancel_pending(), timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the loop; wait for its result (KeyboardInterrupt cancels it)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def call(self, function: Any, *args: Any) -> None:
        """Call a plain function on the loop thread."""
        self.loop.call_soon_threadsafe(function, *args)


async def _cancel_pending() -> None:
    """Cancel every other task on this loop (an agent connection still being served, say)
    and wait for them to finish their clean-up."""
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
