"""A bounded queue of encoded spans, drained in batches by one named daemon thread.

    put(key, spans)   how many fitted; the rest did not (the queue is full: the caller counts)
    the thread        a batch as soon as `max_batch` spans wait, else every `delay` seconds
                      whatever waits; `export(batch)` runs there, one batch at a time
    flush(timeout)    True once everything put so far went through `export`
    close()           stop taking batches; returns how many spans were still queued

A batch is a list of (key, spans) chunks in arrival order, `max_batch` spans at most in all;
the key says whose spans they are (for OTLP: the session, for its resource).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

__all__ = ["Batch", "SpanBatcher"]

type Batch[K] = list[tuple[K, list[bytes]]]

log = logging.getLogger("async_inspect.otlp")


class SpanBatcher[K]:
    """At most `max_queue` spans wait; `put` never blocks and is safe from any thread."""

    def __init__(
        self,
        export: Callable[[Batch[K]], None],
        *,
        max_queue: int,
        max_batch: int,
        delay: float,
        name: str = "async-inspect-otlp",
    ) -> None:
        self._export = export
        self.max_queue = max_queue
        self.max_batch = min(max_batch, max_queue)
        self.delay = delay
        self._chunks: deque[tuple[K, list[bytes]]] = deque()
        self._queued = 0  # spans waiting now
        self._accepted = 0  # spans ever put
        self._taken = 0  # spans ever taken for export
        self._done = 0  # spans whose export returned (or raised)
        self._drain_to = 0  # send whatever was accepted up to here, full batch or not
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def room(self) -> int:
        """Spans that would fit now (only the thread takes spans out, so `put` of this many
        from a single producer fits)."""
        return 0 if self._closed else max(0, self.max_queue - self._queued)

    @property
    def closed(self) -> bool:
        """True after close(): nothing is taken any more."""
        return self._closed

    def put(self, key: K, spans: list[bytes]) -> int:
        """Queue as many of `spans` as fit; returns how many."""
        with self._cond:
            room = self.max_queue - self._queued
            if self._closed or room <= 0 or not spans:
                return 0
            if len(spans) > room:
                spans = spans[:room]
            self._chunks.append((key, spans))
            self._queued += len(spans)
            self._accepted += len(spans)
            if self._queued >= self.max_batch:
                self._cond.notify_all()
            return len(spans)

    def flush(self, timeout: float) -> bool:
        """Wait until everything put so far went through `export`; False on timeout."""
        with self._cond:
            target = self._accepted
            self._drain_to = max(self._drain_to, target)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._done >= target or self._closed, timeout)
            return self._done >= target

    def close(self) -> int:
        """Take no more batches (an export under way goes on); returns the spans dropped
        from the queue."""
        with self._cond:
            self._closed = True
            left, self._queued = self._queued, 0
            self._chunks.clear()
            self._cond.notify_all()
            return left

    def join(self, timeout: float) -> None:
        """Wait (at most `timeout` s) for the thread to end, after close()."""
        self._thread.join(timeout)

    def _ready(self) -> bool:
        return self._closed or self._queued >= self.max_batch or self._taken < self._drain_to

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._cond.wait_for(self._ready, self.delay):
                    self._drain_to = self._accepted  # the delay passed: send what waits
                if self._closed:
                    return
                batch, count = self._take()
            if not batch:
                continue
            try:
                self._export(batch)
            except Exception:  # the thread must live on: later spans still need it
                log.exception("export of %d spans failed", count)
            with self._cond:
                self._done += count
                self._cond.notify_all()

    def _take(self) -> tuple[Batch[K], int]:
        batch: Batch[K] = []
        want = min(self.max_batch, self._queued)
        if self._queued < self.max_batch and self._taken >= self._drain_to:
            want = 0
        count = 0
        while count < want:
            key, spans = self._chunks[0]
            need = want - count
            if len(spans) > need:
                self._chunks[0] = (key, spans[need:])
                spans = spans[:need]
            else:
                self._chunks.popleft()
            batch.append((key, spans))
            count += len(spans)
        self._queued -= count
        self._taken += count
        return batch, count
