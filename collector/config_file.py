"""The config file (`--config async-inspect.toml`): settings by key, and `[[rules]]`.

    endpoint = "https://api.honeycomb.io:443"
    headers = { "x-honeycomb-team" = "..." }
    sampler = "parentbased_traceidratio"
    sampler_arg = 0.1

    [[rules]]
    match = "shop.handlers:health*"       # module:qualname glob, or a module glob
    exclude = true

    [[rules]]
    match = "shop.payments:*"
    name = "payment_processing"           # the span's name
    sample_rate = 1.0                     # for traces rooted here
    attributes = { operation = "pay", kind = "{kind}" }   # "{arg}": from the arguments

Every error names the file and the key (`rules[1].sample_rate`); a constant attribute value
that looks like an id, a token or an e-mail address is refused with a warning.
"""

from __future__ import annotations

import tomllib
from typing import Any

from profiler.agent.rules import Rule, looks_unbounded
from profiler.errors import ConfigError

__all__ = ["DAEMON_SECTIONS", "load_config", "parse_rules"]

DAEMON_SECTIONS = ("collector", "select", "exclude_processes")  # read by the node daemon
_RULE_KEYS = {"match", "name", "sample_rate", "exclude", "attributes"}


def load_config(path: str) -> dict[str, Any]:
    """The file's top-level table. ConfigError if it cannot be read or parsed."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(
            f"cannot read config file {path}: {exc.strerror}",
            "check --config / $ASYNC_INSPECT_CONFIG",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def parse_rules(raw: object, source: str) -> tuple[tuple[Rule, ...], list[str]]:
    """([[rules]] as Rules, warnings). ConfigError names the rule and key at fault."""
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: 'rules' must be an array of tables ([[rules]])")
    rules, warnings = [], []
    for index, table in enumerate(raw):
        where = f"{source}: rules[{index}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} is not a table")
        unknown = set(table) - _RULE_KEYS
        if unknown:
            raise ConfigError(
                f"{where} has unknown key(s) {', '.join(sorted(unknown))}",
                f"a rule takes {', '.join(sorted(_RULE_KEYS))}",
            )
        match = table.get("match")
        if not isinstance(match, str) or not match:
            raise ConfigError(f"{where}.match must be a non-empty glob")
        name = table.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigError(f"{where}.name must be a non-empty string")
        rate = table.get("sample_rate")
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1
        ):
            raise ConfigError(f"{where}.sample_rate={rate!r}: must be a number from 0 to 1")
        exclude = table.get("exclude", False)
        if not isinstance(exclude, bool):
            raise ConfigError(f"{where}.exclude must be true or false")
        attributes = table.get("attributes", {})
        if not isinstance(attributes, dict):
            raise ConfigError(f"{where}.attributes must be a table")
        kept: dict[str, str | int | float | bool] = {}
        for key, value in attributes.items():
            if not isinstance(value, str | int | float | bool):
                raise ConfigError(f"{where}.attributes.{key} must be a string, number or bool")
            if looks_unbounded(value):
                warnings.append(
                    f"{where}.attributes.{key}={value!r} looks like an id or personal data: "
                    "refused (unbounded attribute values make traces unsearchable)"
                )
                continue
            kept[str(key)] = value
        rules.append(Rule(match, name, None if rate is None else float(rate), exclude, kept))
    return tuple(rules), warnings
