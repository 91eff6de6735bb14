"""The named daemon thread that ships finished spans to the collector.

It wakes every 50 ms, ships at the interval (sooner when the buffer is half full), in
batches small enough that one `marshal.dumps` never holds the GIL for long. While the
collector is away, what would have been shipped is dropped and counted, the connection
is retried every second, and the counts are reported when it is back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .. import wire
from .bursts import Bursts
from .channel import Channel, connect
from .tracker import Tracker

__all__ = ["Sender"]

TICK = 0.05
# Between bursts nothing is recorded, and the app runs as if we were not there but for these
# wake-ups: each takes the GIL from the app, on its CPU. A detach request waits up to this.
# Side by side, W2 between bursts with 1 s ticks against 50 ms ones: 0.992 [0.955-1.013].
PAUSED_TICK = 0.25
RECONNECT_EVERY = 1.0


class Sender:
    """Drains the tracker into the channel on its own thread."""

    def __init__(
        self,
        tracker: Tracker,
        channel: Channel,
        hello: Callable[[bool], dict[str, Any]],
        on_stop_request: Callable[[str], None],
        bursts: Bursts | None = None,
    ) -> None:
        self.tracker = tracker
        self.bursts = bursts
        self.channel = channel
        self._hello = hello
        self._on_stop_request = on_stop_request
        self._interval = tracker.settings.ship_interval
        self._batch = tracker.settings.batch_size
        self._high_water = tracker.settings.buffer_size // 2
        self._stop = threading.Event()
        self._ship_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.dropped_disconnected = 0
        self.spans_sent = 0
        self.reconnects = 0

    def start(self) -> None:
        """Start the daemon thread `async-inspect-sender`."""
        self._thread = threading.Thread(target=self._run, name="async-inspect-sender", daemon=True)
        self._thread.start()

    def stop(self, wait: float = 2.0) -> None:
        """Ask the thread to end and wait for it (unless called on that very thread)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(wait)

    @property
    def is_current(self) -> bool:
        """True when called on the sender thread."""
        return self._thread is threading.current_thread()

    def _run(self) -> None:
        next_ship = time.monotonic() + self._interval
        next_connect = 0.0
        orphan_timeout = self.tracker.settings.orphan_timeout
        lost_at: float | None = None
        bursts = self.bursts
        while not self._stop.wait(self._until_tick()):
            try:
                for kind, body in self.channel.receive():
                    if kind == wire.STOP:
                        self._on_stop_request(str(body.get("reason", "detach")))
                        return
                self.tracker.tick_clock()
                now = time.monotonic()
                if bursts is not None:
                    bursts.tick(now)
                if self.channel.broken:
                    lost_at = now if lost_at is None else lost_at
                    if orphan_timeout and now - lost_at > orphan_timeout:
                        self._on_stop_request(wire.ORPHANED)
                        return
                    if now >= next_connect:
                        next_connect = now + RECONNECT_EVERY
                        self._reconnect()
                else:
                    lost_at = None
                if now >= next_ship or len(self.tracker.finished) >= self._high_water:
                    next_ship = now + self._interval
                    self.ship(with_stats=True)
            except Exception as exc:  # the sender must outlive any single bad shipment
                self.tracker.fault(exc)

    def _until_tick(self) -> float:
        """Seconds to the next tick: TICK, PAUSED_TICK between bursts, or sooner for a switch."""
        bursts = self.bursts
        if bursts is None:
            return TICK
        tick = TICK if bursts.recording else PAUSED_TICK
        return min(tick, bursts.until_next(time.monotonic()))

    def ship(self, with_stats: bool = False, extra: list[tuple[Any, ...]] | None = None) -> None:
        """Send new code entries, finished spans (and `extra` records), then stats."""
        with self._ship_lock:
            tracker, channel = self.tracker, self.channel
            codes = _drain(tracker.new_codes, len(tracker.new_codes))
            if codes and not channel.send(wire.CODES, codes):
                tracker.new_codes.extendleft(reversed(codes))  # resent in full on reconnect
            spans = _drain(tracker.finished, self._high_water)
            # One batch's frame at a time, sent before the next is made: the app's malloc
            # reuses that memory, where frames for half the buffer at once (megabytes) were
            # given back to the kernel after each shipment and faulted in again.
            for chunk in _chunks(spans, self._batch):
                self._send_spans(len(chunk), tracker.spans_frame(chunk))
            for chunk in _chunks(extra or [], self._batch):
                self._send_spans(len(chunk), wire.encode_frame(wire.SPANS, chunk))
            if with_stats:
                channel.send(wire.STATS, self.stats())

    def _send_spans(self, count: int, frame: bytes) -> None:
        if self.channel.send_frame(frame):
            self.spans_sent += count
        else:
            self.dropped_disconnected += count

    def stats(self) -> dict[str, Any]:
        """Counters for the collector: what was dropped and why, and our own health."""
        tracker = self.tracker
        dropped = tracker.drop_counts()
        if self.dropped_disconnected:
            dropped["collector_unavailable"] = self.dropped_disconnected
        return {
            "metrics": tracker.metrics(),
            "dropped": dropped,
            "buffer_fill": len(tracker.finished) / max(1, tracker.settings.buffer_size),
            "open_spans": len(tracker.open),
            "buffered": len(tracker.finished),
            "codes": len(tracker.code_ids),
            "tasks_seen": tracker.tasks_seen,
            "spans_sent": self.spans_sent,
            "internal_errors": tracker.internal_errors,
            "last_error": tracker.last_error,
            "reconnects": self.reconnects,
            "bursts": self.bursts.stats() if self.bursts is not None else None,
        }

    def _reconnect(self) -> None:
        try:
            sock = connect(self.channel.address)
        except OSError:
            return
        old = self.channel
        self.channel = Channel(sock, old.address)
        old.close()
        self.reconnects += 1
        # The new collector knows nothing: introduce ourselves and resend the code table.
        if self.channel.send(wire.HELLO, self._hello(True)):
            self.tracker.meters.resend_all()
            self.tracker.new_codes.clear()
            self.channel.send(wire.CODES, self.tracker.all_codes())


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[first : first + size] for first in range(0, len(items), size)]


def _drain(queue: Any, limit: int) -> list[Any]:
    items = []
    popleft = queue.popleft
    for _ in range(limit):
        try:
            items.append(popleft())
        except IndexError:
            break
    return items
