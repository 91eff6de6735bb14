"""OTLP/gRPC export straight from span records, with every span accounted for.

    SessionHub.emit -> OtlpExporter.on_records: encode (otlp_encoder), queue (otlp_batcher)
    async-inspect-otlp thread: a batch -> one ExportTraceServiceRequest -> OtlpClient.export

`ExportWatch` counts exactly: spans queued, exported, and dropped by reason (`queue_full`: the
endpoint is slower than the spans come; `export_failed`: given up after retries; `rejected`:
the endpoint said so in a partial success; `shutdown`: still queued when the session ended).
It feeds /metrics and the closing line, and warns naming the endpoint and the gRPC status,
each kind at most every 30 s.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final

from .metrics import MetricsStore
from .otlp_batcher import Batch, SpanBatcher
from .otlp_client import ExportFailure, OtlpClient
from .otlp_encoder import SessionEncoder, encode_request
from .session import ProcessSession
from .settings import Settings
from .spans import SCOPE

__all__ = ["DROP_REASONS", "ExportWatch", "OtlpExporter"]

DROP_REASONS: Final = ("queue_full", "export_failed", "rejected", "shutdown")
WARN_EVERY: Final = 30.0
JOIN_TIMEOUT: Final = 5.0  # seconds to wait for the export thread once its channel is closed


class ExportWatch:
    """Exact counts of one OTLP exporter, its metrics and its rate-limited warnings. Once
    the exporter is shut down, each span it was handed is either exported or in one reason."""

    def __init__(self, endpoint: str, warn: Callable[[str], None], metrics: MetricsStore) -> None:
        self.endpoint = endpoint
        self.warn = warn
        self.metrics = metrics
        self.queued = 0
        self.exported = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        metrics.exporters["otlp"] = 0
        metrics.spans_dropped.update(self.dropped)  # every reason at 0 from the start
        self._lock = threading.Lock()
        self._last_warned: dict[str, float] = {}

    @property
    def spans_lost(self) -> int:
        """Spans that never reached the endpoint, whatever the reason."""
        return sum(self.dropped.values())

    def took(self, count: int) -> None:
        """`count` spans were queued for export."""
        with self._lock:
            self.queued += count

    def delivered(self, count: int) -> None:
        """The endpoint accepted `count` spans."""
        with self._lock:
            self.exported += count
            self.metrics.spans_exported = self.exported

    def lost(self, reason: str, count: int, why: str, kind: str) -> None:
        """`count` spans will never reach the endpoint; warn `why` (once per `kind` per 30 s)."""
        with self._lock:
            self.dropped[reason] += count
            self.metrics.spans_dropped[reason] = self.dropped[reason]
            if reason == "export_failed":
                self.metrics.export_failures["otlp"] = (
                    self.metrics.export_failures.get("otlp", 0) + 1
                )
        self._say(kind, why)

    def retrying(self, failure: ExportFailure, delay: float) -> None:
        """An export failed for now: say so (the spans are not lost yet)."""
        self._say(failure.code, f"{failure.code} ({failure.details}), retrying in {delay:.1f}s")

    def _say(self, kind: str, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last_warned.get(kind, -WARN_EVERY) < WARN_EVERY:
                return
            self._last_warned[kind] = now
            lost = self.spans_lost
        suffix = f"; {lost} spans lost so far" if lost else ""
        self.warn(f"export to {self.endpoint} failing: {reason}{suffix}")


class OtlpExporter:
    """A record sink: span records -> OTLP/gRPC at `settings.endpoint`. `on_records` runs on
    the collector's event loop; the requests are sent by the `async-inspect-otlp` thread."""

    def __init__(
        self, settings: Settings, watch: ExportWatch, client: OtlpClient | None = None
    ) -> None:
        self.watch = watch
        self._client = client or OtlpClient(settings, f"async-inspect/{SCOPE.version}")
        # One request, retries included, lasts at most the exporter's and the batcher's timeout.
        self._timeout = min(settings.export_timeout, settings.bsp_export_timeout)
        self._drain_timeout = settings.bsp_export_timeout
        self._gave_up = False
        self._answering = True  # the endpoint answered the last request (no retry under way)
        self._encoders: weakref.WeakKeyDictionary[ProcessSession, SessionEncoder] = (
            weakref.WeakKeyDictionary()
        )
        self._batcher: SpanBatcher[SessionEncoder] = SpanBatcher(
            self._send,
            max_queue=settings.max_queue_size,
            max_batch=settings.max_export_batch_size,
            delay=settings.export_interval,
        )

    def on_records(self, session: ProcessSession, records: list[tuple[Any, ...]]) -> int:
        """Encode and queue what fits; count the rest dropped. Returns how many records were
        malformed (skipped, not counted as dropped)."""
        encoder = self._encoders.get(session)
        if encoder is None:
            encoder = self._encoders[session] = SessionEncoder(session)
        room = self._batcher.room
        spans, malformed = encoder.encode(
            session, records if room >= len(records) else records[:room]
        )
        accepted = self._batcher.put(encoder, spans)
        self.watch.took(accepted)
        dropped = len(records) - malformed - accepted
        if dropped and self._batcher.closed:
            self.watch.lost("shutdown", dropped, "the exporter is shut down", "shutdown")
        elif dropped:
            why = "the export queue is full (the endpoint is slower than the spans come)"
            self.watch.lost("queue_full", dropped, why, "queue")
        return malformed

    def backlogged(self, count: int) -> bool:
        """True while `count` more spans would not all fit in the queue but the endpoint is
        answering: spans come in bursts (each agent ships once a second), and a burst larger
        than the queue is worth a moment's wait (the ingest loop stops reading, the agent's
        socket fills) rather than drops. Not while it fails: then the queue drops, counted."""
        batcher = self._batcher
        return (
            self._answering and not batcher.closed and batcher.room < min(count, batcher.max_queue)
        )

    def flush(self, timeout_s: float) -> bool:
        """Send everything queued so far; True if it all went out within `timeout_s` (what
        the endpoint did with it is in the watch's counts)."""
        flushed = self._batcher.flush(timeout_s)
        self._gave_up = self._gave_up or not flushed
        return flushed

    def shutdown(self) -> None:
        """Flush (unless a flush already timed out), stop the thread, close the channel; what
        is still queued is counted dropped (`shutdown`)."""
        if not self._gave_up:
            self.flush(self._drain_timeout)
        left = self._batcher.close()
        self._client.close()  # ends an export still retrying
        self._batcher.join(JOIN_TIMEOUT)
        if left:
            self.watch.lost("shutdown", left, f"{left} spans were still queued at exit", "shutdown")

    def _retrying(self, failure: ExportFailure, delay: float) -> None:
        self._answering = False
        self.watch.retrying(failure, delay)

    def _send(self, batch: Batch[SessionEncoder]) -> None:
        count = sum(len(spans) for _, spans in batch)
        try:
            outcome = self._client.export(
                encode_request(batch), time.monotonic() + self._timeout, self._retrying
            )
        except Exception as exc:  # whatever happened, these spans are counted
            outcome = ExportFailure("INTERNAL", f"{type(exc).__name__}: {exc}")
        self._answering = not isinstance(outcome, ExportFailure)
        if isinstance(outcome, ExportFailure):
            why = f"{outcome.code} ({outcome.details})"
            self.watch.lost("export_failed", count, why, outcome.code)
            return
        rejected = min(count, outcome.partial_success.rejected_spans)
        self.watch.delivered(count - rejected)
        if rejected:
            message = outcome.partial_success.error_message or "no reason given"
            why = f"the endpoint rejected {rejected} spans ({message})"
            self.watch.lost("rejected", rejected, why, "rejected")
