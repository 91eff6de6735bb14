"""CPU accounting over a measurement window: the target, the collector CLI, the two cores."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil

__all__ = ["Meter", "Window"]


@dataclass(frozen=True)
class Window:
    """What one measurement window cost, besides the target's own metric."""

    seconds: float
    target_cpu_s: float | None  # user+system of the target process (all its threads)
    collector_cpu_s: float | None  # user+system of the async-inspect CLI (not its children)
    receiver_cpu_s: float | None  # user+system of the OTLP receiver
    target_core_busy: float | None  # fraction of the target's CPU that was not idle
    load_core_busy: float | None  # same for the load generator's CPU (by default also the CLI's)

    @property
    def target_share(self) -> float | None:
        """Fraction of one CPU the target got: ~1.0 when it, not the load, set the pace."""
        if self.target_cpu_s is None or self.seconds <= 0:
            return None
        return self.target_cpu_s / self.seconds


def _process_cpu(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def _core_times(cpu: int | None) -> tuple[float, float] | None:
    """(busy, total) seconds of one CPU since boot."""
    if cpu is None:
        return None
    times = psutil.cpu_times(percpu=True)[cpu]
    # Linux counts guest time inside user time already (psutil's cpu_percent does the same).
    total = float(sum(times)) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    idle = float(times.idle + getattr(times, "iowait", 0.0))
    return total - idle, total


def _busy(start: tuple[float, float] | None, end: tuple[float, float] | None) -> float | None:
    if start is None or end is None or end[1] <= start[1]:
        return None
    return (end[0] - start[0]) / (end[1] - start[1])


def _delta(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


class Meter:
    """`begin()` and `end()` around a window; `end()` returns the Window."""

    def __init__(
        self,
        target_pid: int,
        collector_pid: int | None,
        receiver_pid: int,
        target_cpu: int | None,
        load_cpu: int | None,
    ) -> None:
        self.pids = (target_pid, collector_pid, receiver_pid)
        self.cpus = (target_cpu, load_cpu)
        self._start = 0.0
        self._processes: tuple[float | None, ...] = ()
        self._cores: tuple[tuple[float, float] | None, ...] = ()

    def begin(self) -> None:
        """Start the window now."""
        self._start = time.monotonic()
        self._processes = tuple(_process_cpu(pid) for pid in self.pids)
        self._cores = tuple(_core_times(cpu) for cpu in self.cpus)

    def end(self) -> Window:
        """Close the window and say what it cost."""
        seconds = time.monotonic() - self._start
        target, collector, receiver = (
            _delta(before, _process_cpu(pid))
            for before, pid in zip(self._processes, self.pids, strict=True)
        )
        target_core, load_core = (
            _busy(before, _core_times(cpu))
            for before, cpu in zip(self._cores, self.cpus, strict=True)
        )
        return Window(seconds, target, collector, receiver, target_core, load_core)
