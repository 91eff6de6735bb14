"""The HTTP API beside /metrics: the processes seen and, per process, its tasks and spans.

    GET /api/processes        {"processes": [{pid, status, service, python, ...}, ...]}
    GET /api/processes/PID    {"process": {...}, "tasks": {...}, "spans": [per span name]}

`async-inspect ps` and `top` read only this (never the collector's internals). Per span
name: calls, errors, mean and p50/p99 estimated from the histogram buckets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from profiler import wire

from .metrics import MetricsStore

__all__ = ["add_api_routes", "percentile", "process_detail", "session_processes"]

ProcessList = Callable[[], list[dict[str, Any]]]


def percentile(buckets: list[int], quantile: float) -> float:
    """Estimate a quantile (ms) from fine-bucket counts by linear interpolation."""
    total = sum(buckets)
    if not total:
        return 0.0
    rank = quantile * total
    seen = 0
    lower = 0.0
    for index, count in enumerate(buckets):
        upper = float(wire.SPAN_BOUNDS_MS[index]) if index < len(wire.SPAN_BOUNDS_MS) else lower
        if count and seen + count >= rank:
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
        lower = upper
    return lower


def session_processes(store: MetricsStore) -> list[dict[str, Any]]:
    """The processes a CLI session observes (what a daemon lists is richer)."""
    listed = []
    for process in store.live():
        session = process.session
        listed.append({
            "pid": session.pid,
            "status": "attached" if process.ended_at is None else "ended",
            "service": session.service_name,
            "python": session.hello.get("python"),
            "command": " ".join(str(a) for a in session.hello.get("argv", []))[:300],
        })  # fmt: skip
    return listed


def process_detail(store: MetricsStore, pid: int) -> dict[str, Any] | None:
    """Task counters and per-span-name statistics of one live process."""
    for process in store.live():
        session = process.session
        if session.pid != pid:
            continue
        by_name: dict[str, list[Any]] = {}
        for (code_id, state), (count, sum_ns, buckets) in process.spans.items():
            entry = by_name.setdefault(session.span_name(code_id), [0, 0, 0, [0] * len(buckets)])
            entry[0] += count
            entry[1] += count if state == wire.STATE_FAILED else 0
            entry[2] += sum_ns
            entry[3] = [a + b for a, b in zip(entry[3], buckets, strict=True)]
        spans = [
            {
                "name": name,
                "calls": calls,
                "errors": errors,
                "mean_ms": round(sum_ns / calls / 1e6, 3) if calls else 0.0,
                "p50_ms": round(percentile(buckets, 0.5), 3),
                "p99_ms": round(percentile(buckets, 0.99), 3),
            }
            for name, (calls, errors, sum_ns, buckets) in by_name.items()
        ]
        spans.sort(key=lambda span: span["calls"], reverse=True)
        return {
            "process": {
                "pid": pid,
                "service": session.service_name,
                "python": session.hello.get("python"),
            },
            "tasks": dict(process.runtime),
            "recording": {"now": process.recording, "share": process.recorded_share},
            "dropped": dict(process.dropped),
            "spans": spans,
        }
    return None


def add_api_routes(app: web.Application, store: MetricsStore, processes: ProcessList) -> None:
    """Add /api/processes and /api/processes/{pid} to `app`."""

    async def list_processes(request: web.Request) -> web.Response:
        return web.json_response({"processes": processes()})

    async def one_process(request: web.Request) -> web.Response:
        try:
            pid = int(request.match_info["pid"])
        except ValueError:
            return web.json_response({"error": "pid must be a number"}, status=400)
        detail = process_detail(store, pid)
        if detail is None:
            return web.json_response({"error": f"PID {pid} is not observed"}, status=404)
        return web.json_response(detail)

    app.router.add_get("/api/processes", list_processes)
    app.router.add_get("/api/processes/{pid}", one_process)
