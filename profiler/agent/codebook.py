"""Which code objects the tracker traces: decided once per code object, with its id, its
rule's sample rate and captured arguments, and the local events enabled on it."""

from __future__ import annotations

import itertools
import selectors
import sys
from collections import deque
from collections.abc import Callable
from types import CodeType

from .codefilter import CodeFilter
from .rules import Capture
from .settings import AgentSettings

__all__ = ["CodeBook", "CodeEntry"]

# (code id, qualified name, file, first line, module): what the collector learns of a code.
CodeEntry = tuple[int, str, str, int, str]
_E = sys.monitoring.events
_TRACED_EVENTS = _E.PY_RESUME | _E.PY_YIELD | _E.PY_RETURN
_WAKE_EVENTS = _E.PY_RETURN  # a selector's select() returned: the loop woke up
MAX_REJECTED = 16_384  # code objects remembered as not traced (beyond: asked again)


class CodeBook:
    """The tracker's code objects (a part of Tracker, which sets it up with _init_codes)."""

    settings: AgentSettings
    tool: int
    # Keyed by id(code): a code object recomputes its hash (over its constants) on every
    # lookup, thousands of instructions per callback. The objects are kept in _codes, so
    # their ids cannot be reused while we hold them.
    code_ids: dict[int, int]
    new_codes: deque[CodeEntry]  # not yet sent to the collector
    _codes: list[CodeType]
    _code_table: list[CodeEntry]
    _code_counter: Callable[[], int]
    _filter: CodeFilter
    _code_rates: dict[int, float]  # sample rate of traces rooted there (rules)
    _captures: dict[int, Capture]  # attributes from arguments (rules)
    _wake_codes: set[int]  # ids of selector select() codes
    # Code not traced, by id, kept alive while we hold its id: only in burst mode, where each
    # burst switches PY_START on again where it returned DISABLE (bursts.py).
    _rejected: dict[int, CodeType]

    def _init_codes(self, code_filter: CodeFilter) -> None:
        self._filter = code_filter
        self.code_ids = {}
        self._codes = []
        self.new_codes = deque()
        self._code_table = []
        self._code_counter = itertools.count(1).__next__
        self._code_rates = {}
        self._captures = {}
        self._wake_codes = set()
        self._rejected = {}

    def consider(self, code: CodeType, module: str) -> int | None:
        """Code id if coroutines of `code` are traced (enabling its local events), else None."""
        known = self.code_ids.get(id(code))
        if known is not None:
            return known
        if id(code) in self._rejected:
            return None
        wanted, rule = self._filter.decide(code, module)
        if not wanted:
            self._reject(code)
            return None
        code_id = self._code_counter()
        self.code_ids[id(code)] = code_id
        self._codes.append(code)
        if rule is not None:
            if rule.sample_rate is not None:
                self._code_rates[code_id] = float(rule.sample_rate)
            if rule.attributes:
                self._captures[code_id] = Capture(
                    dict(rule.captures), self.settings.max_attribute_values
                )
        sys.monitoring.set_local_events(self.tool, code, _TRACED_EVENTS)
        entry = (code_id, code.co_qualname, code.co_filename, code.co_firstlineno, module)
        self._code_table.append(entry)
        self.new_codes.append(entry)
        return code_id

    def _reject(self, code: CodeType) -> None:
        """Remember that `code` is not traced, if bursts will ask again (up to a bound)."""
        if self.settings.burst > 0 and len(self._rejected) < MAX_REJECTED:
            self._rejected[id(code)] = code

    def watch_selector_wakeups(self) -> None:
        """Note when each selector's select() returns: the loop woke up to run callbacks.

        That time is a task's `wake` event: between it and the task's `poll` the task was
        ready but waited behind other callbacks (uvloop has no Python selector: no wake).
        """
        for name in ("SelectSelector", "PollSelector", "EpollSelector", "DevpollSelector",
                     "KqueueSelector"):  # fmt: skip
            select = getattr(getattr(selectors, name, None), "select", None)
            code = getattr(select, "__code__", None)
            if code is not None and id(code) not in self._wake_codes:
                self._wake_codes.add(id(code))
                self._codes.append(code)
                sys.monitoring.set_local_events(self.tool, code, _WAKE_EVENTS)

    def all_codes(self) -> list[CodeEntry]:
        """Every code entry so far (sent again in full after a reconnect)."""
        return list(self._code_table)

    def local_codes(self) -> list[CodeType]:
        """Every code object this tracker enabled local events on (for a clean stop)."""
        return list(self._codes)

    def enable_local_events(self) -> None:
        """Enable again the local events of every code in local_codes (a burst starts)."""
        wake_codes = self._wake_codes
        for code in list(self._codes):
            events = _WAKE_EVENTS if id(code) in wake_codes else _TRACED_EVENTS
            sys.monitoring.set_local_events(self.tool, code, events)
