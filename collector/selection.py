"""Which processes the node daemon attaches to: `[[select]]` and `[[exclude_processes]]`.

A table matches when every key in it matches (AND); a process is selected when any
`[[select]]` table matches (OR) and no `[[exclude_processes]]` table does (exclusion wins).
With no `[[select]]` at all, exactly the processes whose environment has
`ASYNC_INSPECT_ENABLE=1` are selected: nothing is attached to unless someone opted in.

    command    glob over the whole command line      executable  glob over the exe path
    env        NAME or NAME=value in its environment  service     glob over its service name
    namespace  Kubernetes namespace glob              container   Kubernetes container glob
    label      pod label k=v (v may be a glob)        annotation  pod annotation k=v

A `[[select]]` table may also set what the agent does in the processes it selects:
`settings = { sampler = "traceidratio", sampler_arg = 0.01, burst = 0.05 }` (the keys of
settings.PER_PROCESS), over the daemon's own settings. The first matching table's apply.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from profiler.errors import ConfigError

from .discovery import ProcessFacts
from .kubernetes import PodInfo
from .settings import Settings, overridden

__all__ = ["DEFAULT_OPT_IN", "Decision", "Selection", "Selector", "settings_text"]

DEFAULT_OPT_IN = "ASYNC_INSPECT_ENABLE=1"
_KEYS = ("command", "executable", "env", "service", "namespace", "container", "label",
         "annotation")  # fmt: skip


@dataclass(frozen=True)
class Selector:
    """One table: each key that is set must match."""

    command: str | None = None
    executable: str | None = None
    env: str | None = None
    service: str | None = None
    namespace: str | None = None
    container: str | None = None
    label: str | None = None
    annotation: str | None = None
    settings: Settings | None = None
    """The daemon's settings with this table's `settings = {...}` over them (None: none)."""
    overrides: tuple[tuple[str, Any], ...] = ()
    """That table as written, for what the daemon shows."""

    def matches(self, facts: ProcessFacts, pod: PodInfo | None, service: str) -> bool:
        """True if every key of this table matches the process."""
        checks = [
            self.command is None or fnmatch.fnmatchcase(facts.command, self.command),
            self.executable is None or _exe_matches(facts, self.executable),
            self.env is None or _env_matches(facts.environ, self.env),
            self.service is None or fnmatch.fnmatchcase(service, self.service),
            self.namespace is None
            or (pod is not None and fnmatch.fnmatchcase(pod.namespace, self.namespace)),
            self.container is None
            or (pod is not None and fnmatch.fnmatchcase(pod.container, self.container)),
            self.label is None or (pod is not None and _pair_matches(pod.labels, self.label)),
            self.annotation is None
            or (pod is not None and _pair_matches(pod.annotations, self.annotation)),
        ]
        return all(checks)

    def describe(self) -> str:
        """The table as `key=value, ...`, for reasons shown to users."""
        keys = ", ".join(f"{key}={getattr(self, key)}" for key in _KEYS if getattr(self, key))
        if not self.overrides:
            return keys
        return f"{keys}; {settings_text(self.overrides)}"


def settings_text(overrides: Iterable[tuple[str, Any]]) -> str:
    """A table's settings as `ps` and the reasons show them: `key=value, ...`, rules by
    their number."""
    return ", ".join(
        f"{key}={len(value) if key == 'rules' and isinstance(value, list) else value}"
        for key, value in overrides
    )


def _exe_matches(facts: ProcessFacts, wanted: str) -> bool:
    return facts.target is not None and fnmatch.fnmatchcase(facts.target.exe, wanted)


def _env_matches(environ: dict[str, str], wanted: str) -> bool:
    name, sep, value = wanted.partition("=")
    if name not in environ:
        return False
    return not sep or fnmatch.fnmatchcase(environ[name], value)


def _pair_matches(pairs: dict[str, str], wanted: str) -> bool:
    key, sep, value = wanted.partition("=")
    return key in pairs and (not sep or fnmatch.fnmatchcase(pairs[key], value))


class Decision(NamedTuple):
    """Whether a process is selected, why in a few words, and by which table."""

    selected: bool
    reason: str
    table: Selector | None = None


@dataclass(frozen=True)
class Selection:
    """The select and exclude tables; `decide` says whether and why."""

    select: tuple[Selector, ...]
    exclude: tuple[Selector, ...] = ()

    @classmethod
    def default(cls) -> Selection:
        """Opt-in by environment variable only."""
        return cls((Selector(env=DEFAULT_OPT_IN),))

    @classmethod
    def from_config(
        cls, config: dict[str, Any], source: str, settings: Settings | None = None
    ) -> Selection:
        """From a config file's tables; a select table's `settings` go over `settings` (the
        daemon's). ConfigError names an unknown key or bad value."""
        base = settings if settings is not None else Settings()
        select = _tables(config.get("select", []), "select", source, base)
        exclude = _tables(config.get("exclude_processes", []), "exclude_processes", source)
        return cls(select or cls.default().select, exclude)

    def decide(self, facts: ProcessFacts, pod: PodInfo | None, service: str) -> Decision:
        """Whether, why, and by which `[[select]]` table."""
        for table in self.exclude:
            if table.matches(facts, pod, service):
                return Decision(False, f"excluded by [{table.describe()}]")
        for table in self.select:
            if table.matches(facts, pod, service):
                return Decision(True, f"selected by [{table.describe()}]", table)
        return Decision(False, "matches no [[select]] rule")


def _tables(
    raw: object, name: str, source: str, settings: Settings | None = None
) -> tuple[Selector, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: '{name}' must be an array of tables ([[{name}]])")
    tables = []
    for index, table in enumerate(raw):
        where = f"{source}: {name}[{index}]"
        if not isinstance(table, dict) or not table:
            raise ConfigError(f"{where} must be a non-empty table")
        table = dict(table)
        own = table.pop("settings", None) if settings is not None else None
        unknown = set(table) - set(_KEYS)
        if unknown:
            takes = f"{', '.join(_KEYS)}{', settings' if settings is not None else ''}"
            raise ConfigError(
                f"{where} has unknown selector key(s) {', '.join(sorted(unknown))}",
                f"a selector takes {takes}",
            )
        if not table:
            raise ConfigError(f"{where} must match on at least one of {', '.join(_KEYS)}")
        for key, value in table.items():
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where}.{key} must be a non-empty string")
        if own is None or settings is None:
            tables.append(Selector(**table))
            continue
        applied = overridden(settings, own, f"{where}.settings")
        tables.append(Selector(**table, settings=applied, overrides=tuple(own.items())))
    return tuple(tables)
