"""`async-inspect ps` and `top`: views over a collector's HTTP API (a daemon, or a run/attach
session with --metrics-port). They read the API only, never the collector's internals."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import click

from collector.selection import settings_text
from profiler.errors import AsyncInspectError

__all__ = ["ps", "top"]

DEFAULT_API = "http://127.0.0.1:9464"


class ApiUnreachable(AsyncInspectError):
    """The collector's API did not answer."""


def _get(api: str, path: str) -> Any:
    url = api.rstrip("/") + path
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read()).get("error", error.reason)
        except ValueError:
            message = error.reason
        raise ApiUnreachable(f"{url}: {message}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise ApiUnreachable(
            f"no async-inspect API at {api} ({reason})",
            "start `async-inspect collector`, or run/attach with --metrics-port; "
            "or point --api at it",
        ) from None


def _age(since: float | None) -> str:
    if not since:
        return "-"
    seconds = int(time.time() - since)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


@click.command()
@click.option("--api", default=DEFAULT_API, show_default=True, metavar="URL")
@click.option("--all", "show_all", is_flag=True, help="Also list processes not selected.")
def ps(api: str, show_all: bool) -> int:
    """List the processes a collector sees: attached, selected, failed (with why)."""
    processes = _get(api, "/api/processes")["processes"]
    if not show_all:
        processes = [p for p in processes if p.get("status") not in ("not selected", "unsupported")]
    click.echo(f"{'PID':>7}  {'STATUS':<12} {'SINCE':>7}  {'PYTHON':<7} {'SERVICE':<20} DETAIL")
    for process in processes:
        detail = process.get("last_error") or process.get("reason") or process.get("command", "")
        if own := process.get("settings"):  # a node daemon's [[select]] table set them
            detail = f"[{settings_text(own.items())}] {detail}"
        click.echo(
            f"{process['pid']:>7}  {process.get('status', '?'):<12} "
            f"{_age(process.get('since')):>7}  {process.get('python') or '-':<7} "
            f"{(process.get('service') or '-')[:20]:<20} {detail[:80]}"
        )
    return 0


@click.command()
@click.argument("pid", type=int)
@click.option("--api", default=DEFAULT_API, show_default=True, metavar="URL")
@click.option("--once", is_flag=True, help="Print one snapshot and exit.")
@click.option("--interval", type=float, default=2.0, show_default=True, metavar="SECONDS")
def top(pid: int, api: str, once: bool, interval: float) -> int:
    """Live view of one process: tasks, event-loop blocking, and its busiest coroutines."""
    previous: dict[str, int] = {}
    while True:
        detail = _get(api, f"/api/processes/{pid}")
        lines = _render(detail, previous, interval)
        if not once:
            click.echo("\x1b[H\x1b[2J", nl=False)  # clear the screen
        click.echo("\n".join(lines))
        if once:
            return 0
        previous = {span["name"]: span["calls"] for span in detail["spans"]}
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return 0


def _render(detail: dict[str, Any], previous: dict[str, int], interval: float) -> list[str]:
    process, tasks = detail["process"], detail["tasks"]
    finished = tasks.get("tasks_finished") or {}
    recording = detail.get("recording") or {}
    share = float(recording.get("share", 1.0))
    bursts = (
        f"  in bursts: {share:.0%} of the time, {'on' if recording.get('now') else 'paused'} now"
        if share < 1.0
        else ""
    )
    lines = [
        f"PID {process['pid']}  {process['service']}  Python {process.get('python')}{bursts}",
        f"tasks live {tasks.get('tasks_live', 0)} (running {tasks.get('tasks_running', 0)})  "
        f"created {tasks.get('tasks_created', 0)}  "
        + "  ".join(f"{k} {v}" for k, v in sorted(finished.items())),
        f"loop blocked up to {tasks.get('longest_step_ns', 0) / 1e6:.1f} ms in the last interval"
        f"  polls {tasks.get('polls', 0)}  busy {tasks.get('busy_ns', 0) / 1e9:.2f} s",
        "",
        f"{'CALLS':>9} {'/s':>7} {'ERR%':>6} {'MEAN ms':>9} {'P50 ms':>9} {'P99 ms':>9}  SPAN",
    ]
    for span in detail["spans"][:30]:
        name = span["name"]
        rate = (span["calls"] - previous[name]) / interval if name in previous else 0.0
        errors = 100.0 * span["errors"] / span["calls"] if span["calls"] else 0.0
        lines.append(
            f"{span['calls']:>9} {rate:>7.1f} {errors:>6.1f} {span['mean_ms']:>9.2f} "
            f"{span['p50_ms']:>9.2f} {span['p99_ms']:>9.2f}  {name}"
        )
    return lines
