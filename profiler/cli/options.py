"""Command-line flags shared by the commands that collect spans (run, attach, demo)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from collector.config_file import load_config
from collector.settings import OPTIONS, Settings, resolve

__all__ = ["collect_options", "settings_from_flags"]

_PARSERS = {option.key: option for option in OPTIONS}


def _parsed(key: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback parsing a flag with the same parser as its environment variable."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None or value == ():
            return None
        option = _PARSERS[key]
        raw = ",".join(value) if isinstance(value, tuple) else str(value)
        try:
            return option.parse(raw)
        except ValueError as exc:
            shown = "<redacted>" if option.secret else repr(raw)
            raise click.BadParameter(f"{shown}: {exc}") from None

    return callback


def collect_options[F: Callable[..., Any]](function: F) -> F:
    """Decorate a command with every span-collection flag (all default to 'not given')."""
    flags = [
        click.option("--endpoint", callback=_parsed("endpoint"), metavar="URL",
                     help="OTLP/gRPC endpoint, e.g. http://127.0.0.1:4317 "
                     "[env OTEL_EXPORTER_OTLP_ENDPOINT]. Unset: trees in the terminal."),
        click.option("--header", "headers", multiple=True, callback=_parsed("headers"),
                     metavar="K=V", help="Export header, repeatable [OTEL_EXPORTER_OTLP_HEADERS]."),
        click.option("--compression", callback=_parsed("compression"),
                     metavar="gzip|none", help="[OTEL_EXPORTER_OTLP_COMPRESSION]"),
        click.option("--insecure/--secure", default=None,
                     help="Plaintext gRPC (default: by the endpoint's scheme)."),
        click.option("--certificate", callback=_parsed("certificate"), metavar="PEM",
                     help="CA bundle for TLS [OTEL_EXPORTER_OTLP_CERTIFICATE]."),
        click.option("--export-timeout", callback=_parsed("export_timeout"), metavar="MS",
                     help="Timeout of one export, ms [OTEL_EXPORTER_OTLP_TIMEOUT]."),
        click.option("--service-name", callback=_parsed("service_name"),
                     help="service.name [OTEL_SERVICE_NAME]."),
        click.option("--service-version", callback=_parsed("service_version"),
                     help="service.version [ASYNC_INSPECT_SERVICE_VERSION]."),
        click.option("--resource", "resource_attributes", multiple=True,
                     callback=_parsed("resource_attributes"), metavar="K=V",
                     help="Resource attribute, repeatable [OTEL_RESOURCE_ATTRIBUTES]."),
        click.option("--export-interval", callback=_parsed("export_interval"), metavar="MS",
                     help="Delay between exports, ms (default 1000) [OTEL_BSP_SCHEDULE_DELAY]."),
        click.option("--max-queue-size", callback=_parsed("max_queue_size"), metavar="N",
                     help="[OTEL_BSP_MAX_QUEUE_SIZE] (default 2048)"),
        click.option("--max-export-batch-size", callback=_parsed("max_export_batch_size"),
                     metavar="N", help="[OTEL_BSP_MAX_EXPORT_BATCH_SIZE] (default 512)"),
        click.option("--sampler", callback=_parsed("sampler"),
                     help="always_on, always_off, traceidratio, parentbased_* "
                     "[OTEL_TRACES_SAMPLER]."),
        click.option("--sampler-arg", callback=_parsed("sampler_arg"), metavar="RATIO",
                     help="Sampling ratio 0..1 [OTEL_TRACES_SAMPLER_ARG]."),
        click.option("--burst", callback=_parsed("burst"), metavar="SECONDS",
                     help="Record everything in bursts this long, the sampling ratio's share "
                     "of the time, with every event off in between [ASYNC_INSPECT_BURST]."),
        click.option("--include", multiple=True, callback=_parsed("include"), metavar="GLOB",
                     help="Also trace these modules (library code) [ASYNC_INSPECT_INCLUDE]."),
        click.option("--exclude", multiple=True, callback=_parsed("exclude"), metavar="GLOB",
                     help="Never trace module or module:qualname globs [ASYNC_INSPECT_EXCLUDE]."),
        click.option("--max-events", callback=_parsed("max_events"), metavar="N",
                     help="Events kept per span (default 128) [ASYNC_INSPECT_MAX_EVENTS]."),
        click.option("--split-after", callback=_parsed("split_after"), metavar="SECONDS",
                     help="Spans started under an older parent begin a new linked trace "
                     "(default 30) [ASYNC_INSPECT_SPLIT_AFTER]."),
        click.option("--output", "-o", callback=_parsed("output"), metavar="FILE",
                     help="Also write every span as JSON lines [ASYNC_INSPECT_OUTPUT]."),
        click.option("--metrics-port", callback=_parsed("metrics_port"), metavar="PORT",
                     help="Serve Prometheus /metrics, /healthz, /readyz on this port "
                     "[ASYNC_INSPECT_METRICS_PORT]."),
        click.option("--metrics-address", callback=_parsed("metrics_address"), metavar="ADDR",
                     help="Address for --metrics-port (default 127.0.0.1)."),
        click.option("--metrics-naming", callback=_parsed("metrics_naming"),
                     metavar="otel|tempo", help="Span metric names (default otel)."),
        click.option("--max-span-names", callback=_parsed("max_span_names"), metavar="N",
                     help="Span names per service in metrics (default 1000)."),
        click.option("--span-processor", "span_processors", multiple=True,
                     callback=_parsed("span_processors"), metavar="MODULE:FACTORY",
                     help="Add an OpenTelemetry span processor (a factory returning one) "
                     "[ASYNC_INSPECT_SPAN_PROCESSORS]."),
        click.option("--config", "config_path", type=click.Path(dir_okay=False),
                     metavar="FILE", help="TOML config file: settings and [[rules]] "
                     "[ASYNC_INSPECT_CONFIG]."),
        click.option("--tree/--no-tree", default=None,
                     help="Draw traces on stderr (default: only when no endpoint is set)."),
        click.option("--quiet", "-q", is_flag=True, help="No status lines, only traces."),
    ]  # fmt: skip
    for flag in reversed(flags):
        function = flag(function)
    return function


def settings_from_flags(flags: dict[str, Any]) -> Settings:
    """Settings: flags > environment > config file (--config or $ASYNC_INSPECT_CONFIG) >
    defaults. Warnings about refused values are printed once, here."""
    values = {k: v for k, v in flags.items() if k not in ("tree", "quiet", "config_path")}
    path = flags.get("config_path") or os.environ.get("ASYNC_INSPECT_CONFIG")
    file = load_config(path) if path else None
    settings = resolve(values, os.environ, file, path or "config file")
    for warning in settings.warnings:
        click.echo(f"async-inspect: warning: {warning}", err=True)
    return settings
