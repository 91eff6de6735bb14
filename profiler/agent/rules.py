"""Per-function rules: the zero-code form of `#[trace(name=..., sample_rate=..., attributes=...)]`.

A rule matches a coroutine function by glob, against `module:qualname` when the pattern has
a colon, else against the module name; the first matching rule wins. The agent applies
what needs the running process (exclude, the sample rate of traces rooted there, attribute
values captured from the coroutine's arguments); the collector applies the rest (the span's
new name, static attributes). A rule that matches library code also traces it.

Captured attributes are templates over argument names, e.g. `"{kind}"` or `"GET {route}"`.
Their values are bounded: past `max_values` distinct values per rule attribute, the value
is `__overflow__` (an id or user input would otherwise explode every backend's indexes).
"""

from __future__ import annotations

import fnmatch
import re
import string
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OVERFLOW", "Capture", "Rule", "RuleBook"]

OVERFLOW = "__overflow__"
_MAX_VALUE_LENGTH = 128


@dataclass(frozen=True)
class Rule:
    """One rule, as the config file's `[[rules]]` table describes it."""

    match: str
    name: str | None = None
    sample_rate: float | None = None
    exclude: bool = False
    attributes: dict[str, str | int | float | bool] = field(default_factory=dict)

    def matches(self, module: str, qualname: str) -> bool:
        """True if this rule applies to `module:qualname`."""
        subject = f"{module}:{qualname}" if ":" in self.match else module
        return fnmatch.fnmatchcase(subject, self.match)

    @property
    def static_attributes(self) -> dict[str, str | int | float | bool]:
        """Attributes with constant values (no `{argument}` placeholder)."""
        return {k: v for k, v in self.attributes.items() if not _placeholders(v)}

    @property
    def captures(self) -> dict[str, str]:
        """Attributes whose values are templates over the coroutine's arguments."""
        return {k: v for k, v in self.attributes.items() if isinstance(v, str) and _placeholders(v)}

    def to_wire(self) -> dict[str, Any]:
        """What the agent needs of this rule."""
        return {
            "match": self.match,
            "sample_rate": self.sample_rate,
            "exclude": self.exclude,
            "captures": self.captures,
        }


def _placeholders(value: object) -> list[str]:
    if not isinstance(value, str):
        return []
    try:
        return [name for _, name, _, _ in string.Formatter().parse(value) if name]
    except ValueError:  # an unbalanced brace: a constant string
        return []


class Capture:
    """Fills one rule's attribute templates from a coroutine's arguments, with a value cap."""

    def __init__(self, templates: dict[str, str], max_values: int) -> None:
        self.templates = templates
        self.names = {key: _placeholders(value) for key, value in templates.items()}
        self.max_values = max_values
        self.seen: dict[str, set[str]] = {key: set() for key in templates}
        self.overflowed = 0

    def values(self, arguments: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        """(key, value) pairs; a template naming a missing argument is skipped."""
        result = []
        for key, template in self.templates.items():
            try:
                fields = {name: _short(arguments[name]) for name in self.names[key]}
            except KeyError:
                continue
            value = template.format(**fields)
            seen = self.seen[key]
            if value not in seen:
                if len(seen) >= self.max_values:
                    self.overflowed += 1
                    value = OVERFLOW
                else:
                    seen.add(value)
            result.append((key, value))
        return tuple(result)


def _short(value: Any) -> str:
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # an argument whose __str__ fails
        text = f"<{type(value).__name__}>"
    return text[:_MAX_VALUE_LENGTH]


class RuleBook:
    """Rules in order; `find` returns the first that matches."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules

    @classmethod
    def from_wire(cls, rules: list[dict[str, Any]]) -> RuleBook:
        """Rules as the agent receives them."""
        return cls(
            [
                Rule(
                    str(rule["match"]),
                    sample_rate=rule.get("sample_rate"),
                    exclude=bool(rule.get("exclude")),
                    attributes=dict(rule.get("captures") or {}),
                )
                for rule in rules
            ]
        )

    def find(self, module: str, qualname: str) -> Rule | None:
        """The first rule matching `module:qualname`, if any."""
        for rule in self.rules:
            if rule.matches(module, qualname):
                return rule
        return None


_UNBOUNDED = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # a UUID
    r"|\d{6,}"  # a long number: an id, a timestamp
    r"|[0-9a-f]{16,}"  # a hash or token
    r"|[^@\s]+@[^@\s]+\.\w+",  # an e-mail address
    re.IGNORECASE,
)


def looks_unbounded(value: object) -> bool:
    """True for a constant that looks like an id, a token or personal data."""
    return isinstance(value, str) and _UNBOUNDED.search(value) is not None
