"""The application's own OpenTelemetry trace context. When the app traces with
OpenTelemetry itself, a root span of ours started under one of its spans joins that trace
(and, parent-based, its sampling decision) instead of starting one of its own. Read from
the app's `opentelemetry.trace` module only once the app has imported it: nothing is
imported here."""

from __future__ import annotations

import sys

__all__ = ["app_otel_parent"]


def app_otel_parent() -> tuple[int, int, bool] | None:
    """(trace id, span id, sampled) of the application's current OpenTelemetry span, if the
    app uses OpenTelemetry and a span is current: our root then joins the app's trace."""
    otel_trace = sys.modules.get("opentelemetry.trace")
    if otel_trace is None:
        return None
    try:
        context = otel_trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return int(context.trace_id), int(context.span_id), bool(context.trace_flags.sampled)
    except Exception:  # an API version we do not know: no propagation, no harm
        return None
