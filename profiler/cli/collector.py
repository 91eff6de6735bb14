"""`async-inspect collector`: the node daemon. Finds Python 3.12+ processes on this machine,
attaches to the selected ones, exports their spans, serves metrics and an API."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

import click

from collector.config_file import load_config
from collector.daemon import DaemonSettings, NodeDaemon
from collector.kubernetes import KubeApi
from collector.selection import Selection
from collector.settings import resolve
from profiler.errors import ConfigError

from .options import collect_options

__all__ = ["collector"]

_DAEMON_KEYS = {"interval", "max_processes", "orphan_timeout", "attach_timeout", "node_name"}


@click.command()
@click.option("--interval", type=float, metavar="SECONDS", help="Between scans (default 5).")
@click.option("--max-processes", type=int, metavar="N", help="Attached at once (default 50).")
@click.option("--node-name", metavar="NAME",
              help="Kubernetes node [ASYNC_INSPECT_NODE_NAME, NODE_NAME].")  # fmt: skip
@collect_options
def collector(
    interval: float | None, max_processes: int | None, node_name: str | None, **flags: Any
) -> int:
    """Run the node daemon: attach to the selected Python processes of this machine (no
    config: those started with ASYNC_INSPECT_ENABLE=1), until SIGTERM; then detach all.

    \b
      async-inspect collector --endpoint http://otel-collector:4317 --metrics-port 9464
      async-inspect collector --config /etc/async-inspect/config.toml
    """
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s async-inspect: %(message)s",
    )  # fmt: skip
    path = flags.pop("config_path", None) or os.environ.get("ASYNC_INSPECT_CONFIG")
    file = load_config(path) if path else {}
    source = path or "config file"
    values = {k: v for k, v in flags.items() if k not in ("tree", "quiet")}
    # A daemon serves Prometheus on every interface by default, on 9464 unless told otherwise.
    if values.get("metrics_address") is None and "metrics_address" not in file:
        values["metrics_address"] = os.environ.get("ASYNC_INSPECT_METRICS_ADDRESS", "0.0.0.0")
    settings = resolve(values, os.environ, file or None, source)
    daemon = _daemon_settings(file.get("collector", {}), source, interval, max_processes,
                              node_name)  # fmt: skip
    selection = Selection.from_config(file, source, settings) if file else Selection.default()
    tables = [table.settings for table in selection.select if table.settings is not None]
    for warning in [*settings.warnings, *(w for own in tables for w in own.warnings)]:
        logging.getLogger("async_inspect").warning("%s", warning)
    port = settings.metrics_port if settings.metrics_port is not None else 9464
    node = NodeDaemon(settings, daemon, selection, KubeApi.discover())
    return asyncio.run(_serve(node, port, settings.metrics_address))


async def _serve(node: NodeDaemon, port: int, address: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.run(stop, port, address)
    return 0


def _daemon_settings(
    table: object,
    source: str,
    interval: float | None,
    max_processes: int | None,
    node_name: str | None,
) -> DaemonSettings:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [collector] must be a table")
    unknown = set(table) - _DAEMON_KEYS
    if unknown:
        raise ConfigError(
            f"{source}: [collector] has unknown key(s) {', '.join(sorted(unknown))}",
            f"it takes {', '.join(sorted(_DAEMON_KEYS))}",
        )
    values: dict[str, Any] = {}
    for key in ("interval", "orphan_timeout", "attach_timeout"):
        if key in table:
            values[key] = _positive(table[key], f"{source}: collector.{key}")
    if "max_processes" in table:
        values["max_processes"] = int(
            _positive(table["max_processes"], f"{source}: collector.max_processes")
        )
    if interval is not None:
        values["interval"] = _positive(interval, "--interval")
    if max_processes is not None:
        values["max_processes"] = int(_positive(max_processes, "--max-processes"))
    values["node_name"] = (
        node_name
        or os.environ.get("ASYNC_INSPECT_NODE_NAME")
        or os.environ.get("NODE_NAME")
        or table.get("node_name")
    )
    return DaemonSettings(**values)


def _positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{name}={value!r}: must be a positive number")
    return float(value)
