"""The in-process agent: runs inside the observed Python 3.12+ process.

Standard library only, loaded under a private package name (see `bootstrap`), never raises
into the application, never blocks it, and keeps bounded memory (counted drops). It watches
coroutines with sys.monitoring (`tracker`), learns about tasks through a chained task
factory (`tasks`), and ships finished spans to the collector from a daemon thread (`sender`)
in the format of `profiler.wire`.
"""

from .runtime import AGENT_VERSION, Agent, active, start

__all__ = ["AGENT_VERSION", "Agent", "active", "start"]
