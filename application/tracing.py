"""Trace context as the service keeps it: the W3C ``traceparent`` of a command's cause.

Pure helpers over the OpenTelemetry API (which is a no-op until an SDK is
configured; ``infrastructure/tracing.py`` configures one when asked). The
service keeps one string per stored event, the ``traceparent`` of the command
that caused it (docs/architecture.md, "Trace context"), never the domain
event's own data.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["TRACEPARENT", "TRACER_NAME", "context_of", "traceparent_of"]

TRACEPARENT = "traceparent"
TRACER_NAME = "batch_slot_service"
# Only W3C trace context: what the service keeps and sends is exactly a traceparent,
# whatever OTEL_PROPAGATORS says (baggage and tracestate are not kept).
_PROPAGATOR = TraceContextTextMapPropagator()


def context_of(carrier: Mapping[str, str]) -> Context | None:
    """The remote context a carrier's valid ``traceparent`` names (None: none, or invalid)."""
    if TRACEPARENT not in carrier:
        return None
    ctx = _PROPAGATOR.extract(carrier)
    return ctx if ctx else None


def traceparent_of(ctx: Context | None) -> str | None:
    """The ``traceparent`` of the span a context holds (None: no valid span in it)."""
    if ctx is None:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=ctx)
    return carrier.get(TRACEPARENT)
