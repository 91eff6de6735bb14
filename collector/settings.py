"""Every setting of async-inspect, declared once: name, environment variable, default, meaning.

Resolution order: command-line flag > environment variable > config file > default.
OpenTelemetry's own variables are used wherever one exists; ours are `ASYNC_INSPECT_*`.
A bad value from any source is a ConfigError that names the setting and where it came from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import unquote, urlsplit

from profiler.agent.rules import Rule
from profiler.errors import ConfigError

from .config_file import DAEMON_SECTIONS, parse_rules

__all__ = ["OPTIONS", "PER_PROCESS", "Option", "Settings", "overridden", "resolve"]


def _endpoint(text: str) -> str:
    parts = urlsplit(text if "://" in text else f"http://{text}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected http://host:port or https://host:port")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port is not a number") from None
    default_port = 443 if parts.scheme == "https" else 4317
    return f"{parts.scheme}://{parts.hostname}:{port or default_port}"


def _pairs(text: str) -> dict[str, str]:
    """`k=v,k2=v2` (values may be %-encoded, as OTEL_EXPORTER_OTLP_HEADERS allows)."""
    result: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{item.split('=')[0]!r} is not key=value")
        result[unquote(key.strip())] = unquote(value.strip())
    return result


def _globs(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a positive number of seconds")
    return value


def _millis(text: str) -> float:
    return _seconds(text) / 1000.0


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _compression(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in ("gzip", "none", ""):
        raise ValueError("expected gzip or none")
    return lowered or "none"


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number from 0 to 65535")
    return value


def _naming(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in ("otel", "tempo"):
        raise ValueError("expected otel or tempo")
    return lowered


SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


def _sampler(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in SAMPLERS:
        raise ValueError(f"expected one of {', '.join(SAMPLERS)}")
    return lowered


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be a number from 0 to 1")
    return value


@dataclass(frozen=True)
class Option:
    """One setting: its key (config file and Settings field), env variable, parser, help."""

    key: str
    env: str | None
    parse: Callable[[str], Any]
    help: str
    secret: bool = False  # never echo the value (headers carry API keys)


OPTIONS: tuple[Option, ...] = (
    Option("endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT", _endpoint,
           "OTLP/gRPC endpoint; unset = draw traces in the terminal only"),
    Option("headers", "OTEL_EXPORTER_OTLP_HEADERS", _pairs,
           "headers sent with every export (k=v,...), e.g. API keys; never logged", secret=True),
    Option("compression", "OTEL_EXPORTER_OTLP_COMPRESSION", _compression, "gzip or none"),
    Option("insecure", "OTEL_EXPORTER_OTLP_INSECURE", _bool,
           "plaintext gRPC even for an https endpoint"),
    Option("certificate", "OTEL_EXPORTER_OTLP_CERTIFICATE", str,
           "CA bundle (PEM) to verify the endpoint's TLS certificate"),
    Option("export_timeout", "OTEL_EXPORTER_OTLP_TIMEOUT", _millis,
           "seconds one export may take (env in ms)"),
    Option("service_name", "OTEL_SERVICE_NAME", str,
           "service.name (default: the target's OTEL_SERVICE_NAME, else its program name)"),
    Option("service_version", "ASYNC_INSPECT_SERVICE_VERSION", str, "service.version"),
    Option("resource_attributes", "OTEL_RESOURCE_ATTRIBUTES", _pairs,
           "extra resource attributes (k=v,...)"),
    Option("export_interval", "OTEL_BSP_SCHEDULE_DELAY", _millis,
           "seconds between exports (env in ms, as the OTel SDK)"),
    Option("max_queue_size", "OTEL_BSP_MAX_QUEUE_SIZE", _positive_int,
           "spans queued for export; beyond it spans are dropped (counted)"),
    Option("max_export_batch_size", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", _positive_int,
           "spans per export request"),
    Option("bsp_export_timeout", "OTEL_BSP_EXPORT_TIMEOUT", _millis,
           "seconds the batch processor waits for one export (env in ms)"),
    Option("sampler", "OTEL_TRACES_SAMPLER", _sampler, "trace sampler, decided per trace root"),
    Option("sampler_arg", "OTEL_TRACES_SAMPLER_ARG", _ratio, "ratio for traceidratio samplers"),
    Option("burst", "ASYNC_INSPECT_BURST", _seconds,
           "record everything in bursts this long, the sampling ratio's share of the time, "
           "every event off in between (instead of deciding per trace)"),
    Option("include", "ASYNC_INSPECT_INCLUDE", _globs,
           "module globs traced even in site-packages / stdlib (comma-separated)"),
    Option("exclude", "ASYNC_INSPECT_EXCLUDE", _globs,
           "module or module:qualname globs never traced (comma-separated)"),
    Option("max_events", "ASYNC_INSPECT_MAX_EVENTS", _positive_int, "events kept per span"),
    Option("split_after", "ASYNC_INSPECT_SPLIT_AFTER", _seconds,
           "a span started under a parent older than this starts a new, linked trace"),
    Option("output", "ASYNC_INSPECT_OUTPUT", str, "also write every span as JSON lines here"),
    Option("metrics_port", "ASYNC_INSPECT_METRICS_PORT", _port,
           "serve Prometheus /metrics (and /healthz, /readyz) on this port"),
    Option("metrics_address", "ASYNC_INSPECT_METRICS_ADDRESS", str,
           "address to serve metrics on (default 127.0.0.1)"),
    Option("metrics_naming", "ASYNC_INSPECT_METRICS_NAMING", _naming,
           "span metric names: otel (spanmetrics connector) or tempo (metrics-generator)"),
    Option("max_span_names", "ASYNC_INSPECT_MAX_SPAN_NAMES", _positive_int,
           "distinct span names per service; beyond, the name is __overflow__"),
    Option("max_attribute_values", "ASYNC_INSPECT_MAX_ATTRIBUTE_VALUES", _positive_int,
           "distinct values of a rule's captured attribute; beyond: __overflow__"),
    Option("span_processors", "ASYNC_INSPECT_SPAN_PROCESSORS", _globs,
           "extra OpenTelemetry span processors, as module:factory import paths"),
)  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """Resolved settings; see OPTIONS for each field's meaning and variable."""

    endpoint: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    compression: str = "none"
    insecure: bool | None = None
    certificate: str | None = None
    export_timeout: float = 10.0
    service_name: str | None = None
    service_version: str | None = None
    resource_attributes: dict[str, str] = field(default_factory=dict)
    export_interval: float = 1.0
    max_queue_size: int = 2048
    max_export_batch_size: int = 512
    bsp_export_timeout: float = 30.0
    sampler: str = "parentbased_always_on"
    sampler_arg: float | None = None
    burst: float | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_events: int = 128
    split_after: float = 30.0
    output: str | None = None
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"
    metrics_naming: str = "otel"
    max_span_names: int = 1000
    max_attribute_values: int = 50
    span_processors: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    warnings: tuple[str, ...] = ()  # refused values etc., for the CLI to show once
    config_file: str | None = None

    def __post_init__(self) -> None:
        if self.max_export_batch_size > self.max_queue_size:
            raise ConfigError(
                f"max export batch size {self.max_export_batch_size} exceeds the max queue "
                f"size {self.max_queue_size}",
                "lower OTEL_BSP_MAX_EXPORT_BATCH_SIZE or raise OTEL_BSP_MAX_QUEUE_SIZE",
            )
        if self.burst is not None and not 0.0 < self.sample_ratio < 1.0:
            raise ConfigError(
                f"bursts of {self.burst:g}s need a sampling ratio between 0 and 1 (the share "
                f"of the time they record); the sampler gives {self.sample_ratio:g}",
                "add --sampler traceidratio --sampler-arg 0.01, or set OTEL_TRACES_SAMPLER="
                "traceidratio and OTEL_TRACES_SAMPLER_ARG",
            )

    @property
    def burst_every(self) -> float:
        """Seconds from one burst's start to the next (0 without bursts)."""
        return self.burst / self.sample_ratio if self.burst is not None else 0.0

    @property
    def sample_ratio(self) -> float:
        """The probability a trace is kept, from the sampler and its argument."""
        if self.sampler in ("always_off", "parentbased_always_off"):
            return 0.0
        if self.sampler.endswith("traceidratio"):
            return 1.0 if self.sampler_arg is None else self.sampler_arg
        return 1.0


def resolve(
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    file: Mapping[str, Any] | None = None,
    file_name: str = "config file",
) -> Settings:
    """Settings from flags (already typed; None = not given), environment and config file."""
    values: dict[str, Any] = {}
    known = {f.name for f in fields(Settings)}
    for option in OPTIONS:
        if flags.get(option.key) is not None:
            values[option.key] = flags[option.key]
        elif option.env and environ.get(option.env, "").strip():
            values[option.key] = _parse(option, environ[option.env], f"${option.env}")
        elif file and option.key in file:
            values[option.key] = _from_file(option, file[option.key], file_name)
    unknown = set(flags) - known
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    if file:
        unknown = set(file) - {o.key for o in OPTIONS} - {"rules", *DAEMON_SECTIONS}
        if unknown:
            raise ConfigError(
                f"{file_name}: unknown setting(s) {', '.join(sorted(unknown))}",
                "see `async-inspect run --help` for the settings a config file may hold",
            )
        if "rules" in file:
            values["rules"], warnings = parse_rules(file["rules"], file_name)
            values["warnings"] = tuple(warnings)
        values["config_file"] = file_name
    return Settings(**values)


PER_PROCESS = ("sampler", "sampler_arg", "burst", "include", "exclude", "max_events",
               "split_after", "max_attribute_values", "rules")  # fmt: skip
"""What the agent in one process does, and the rules of its spans: a node daemon's
`[[select]]` table may set these for the processes it selects (`settings = {...}`). Everything
else is the daemon's own."""


def overridden(settings: Settings, table: object, source: str) -> Settings:
    """`settings` with a `[[select]]` table's `settings = {...}` over it, validated as a
    whole (bursts need a sampling ratio; `burst = false` turns the daemon's bursts off; the
    table's `rules` come before the daemon's). ConfigError names the table's key at fault."""
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{source} must be a non-empty table of settings")
    unknown = set(table) - set(PER_PROCESS)
    if unknown:
        raise ConfigError(
            f"{source} has setting(s) that are not per process: {', '.join(sorted(unknown))}",
            f"a [[select]] table may set {', '.join(PER_PROCESS)}",
        )
    by_key = {option.key: option for option in OPTIONS}
    values: dict[str, Any] = {
        # `burst = false`: record all the time, where the daemon records in bursts.
        key: None if key == "burst" and raw is False else _from_file(by_key[key], raw, source)
        for key, raw in table.items()
        if key != "rules"
    }
    values["warnings"] = ()  # the table's own, the daemon's are said once
    if "rules" in table:  # first, then the daemon's: the first rule that matches applies
        rules, warnings = parse_rules(table["rules"], source)
        values["rules"] = (*rules, *settings.rules)
        values["warnings"] = tuple(warnings)
    try:
        return replace(settings, **values)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.message}", exc.hint) from None


def _from_file(option: Option, raw: object, file_name: str) -> Any:
    source = f"{file_name}: {option.key}"
    if isinstance(raw, str):
        return _parse(option, raw, source)
    if isinstance(raw, bool):
        return _parse(option, "true" if raw else "false", source)
    if isinstance(raw, int | float):
        return _parse(option, str(raw), source)
    if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        return _parse(option, ",".join(raw), source)
    if isinstance(raw, dict) and option.parse is _pairs:
        return {str(key): str(value) for key, value in raw.items()}
    shown = "<redacted>" if option.secret else repr(raw)
    raise ConfigError(f"invalid {source} = {shown}: wrong type", f"fix {option.key} in the file")


def _parse(option: Option, raw: str, source: str) -> Any:
    try:
        return option.parse(raw)
    except ValueError as exc:
        shown = "<redacted>" if option.secret else repr(raw)
        raise ConfigError(
            f"invalid {source}={shown}: {exc}", f"fix or unset {option.env or option.key}"
        ) from None
