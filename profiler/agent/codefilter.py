"""Which coroutines become spans: application code by default, library code on request.

`CodeFilter.wants` runs inside a sys.monitoring callback the first time a code object
starts (code run inside a callback raises no events of its own, so it cannot recurse).
Patterns and path lists are prepared once here; per code object the cost is a few string
tests, after which the tracker never asks again for that code.
"""

from __future__ import annotations

import fnmatch
import os
import re
import site
import sysconfig
from types import CodeType

from .rules import Rule, RuleBook
from .settings import AgentSettings

__all__ = ["AGENT_FILENAME_PREFIX", "CO_COROUTINE", "CodeFilter"]

CO_COROUTINE = 0x0080  # inspect.CO_COROUTINE: an `async def` function
AGENT_FILENAME_PREFIX = "<async-inspect"
_LIBRARY_MARKERS = ("/site-packages/", "/dist-packages/")


def _library_prefixes() -> tuple[str, ...]:
    paths: set[str] = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            paths.add(path)
    try:
        paths.update(site.getsitepackages())
        paths.add(site.getusersitepackages())
    except AttributeError:  # a virtualenv's old site.py may lack these
        pass
    prefixes: set[str] = set()
    for path in paths:
        for variant in (path, os.path.realpath(path)):
            prefixes.add(variant.rstrip(os.sep) + os.sep)
    return tuple(sorted(prefixes))


def _compile_globs(globs: tuple[str, ...]) -> re.Pattern[str] | None:
    if not globs:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(glob)})" for glob in globs))


class CodeFilter:
    """Decides, once per code object, whether its coroutines are traced."""

    def __init__(self, settings: AgentSettings) -> None:
        self._include = _compile_globs(settings.include)
        self._exclude = _compile_globs(settings.exclude)
        self._trace_library = settings.trace_library
        self._rules = RuleBook.from_wire(list(settings.rules))
        self._prefixes = _library_prefixes()
        self._by_file: dict[str, bool] = {}

    def is_library_file(self, filename: str) -> bool:
        """True for the standard library, site-packages and frozen modules."""
        known = self._by_file.get(filename)
        if known is None:
            known = (
                filename.startswith(self._prefixes)
                or filename.startswith("<frozen")
                or _LIBRARY_MARKERS[0] in filename
                or _LIBRARY_MARKERS[1] in filename
            )
            self._by_file[filename] = known
        return known

    def wants(self, code: CodeType, module: str) -> bool:
        """True if coroutines of `code` (defined in `module`) should become spans."""
        return self.decide(code, module)[0]

    def decide(self, code: CodeType, module: str) -> tuple[bool, Rule | None]:
        """(traced?, the rule that applies) for coroutines of `code` in `module`."""
        if not code.co_flags & CO_COROUTINE:
            return False, None
        filename = code.co_filename
        if filename.startswith(AGENT_FILENAME_PREFIX):
            return False, None
        rule = self._rules.find(module, code.co_qualname) if self._rules.rules else None
        if rule is not None:
            return not rule.exclude, rule
        return self._default(code, module), None

    def _default(self, code: CodeType, module: str) -> bool:
        filename = code.co_filename
        qualified = module + ":" + code.co_qualname
        if self._exclude is not None and (
            self._exclude.match(module) or self._exclude.match(qualified)
        ):
            return False
        if self._include is not None and (
            self._include.match(module) or self._include.match(qualified)
        ):
            return True
        return self._trace_library or not self.is_library_file(filename)
