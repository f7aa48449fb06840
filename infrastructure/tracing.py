"""OpenTelemetry tracing: the tracer provider, and trace context on Kafka headers.

Off unless configured (``infrastructure/settings.py``: the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_TRACES_EXPORTER`` variables). Off,
``Tracing.tracer`` is None and no span is made anywhere; an inbound
``traceparent`` is still kept with the events it caused and passed on to the
outbound headers (a pass-through service does not cut a trace). On, the one
container (``infrastructure/bootstrap.py``) builds a ``TracerProvider`` with a
batching exporter (OTLP over HTTP, or the console) and shuts it down (flushing
what is buffered) when it closes. The provider is the container's own: it is
not set as the process's global provider.

The spans (docs/operations.md, "Tracing"): ``consume`` (worker, one
per inbound message, under the inbound ``traceparent``), ``decide`` and
``store`` (``BatchService``, under ``consume``), ``project`` (projector) and
``publish`` (outbox), under the context stored with each event.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry.context import Context
from opentelemetry.trace import Span, Status, StatusCode, Tracer

from application.tracing import TRACEPARENT, TRACER_NAME, context_of
from infrastructure.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = [
    "TRACEPARENT",
    "Tracing",
    "build_tracing",
    "context_from_headers",
    "with_traceparent",
]

log = logging.getLogger("batchslot.tracing")
# The W3C headers a traceparent we set replaces (tracestate belongs to the replaced one).
_TRACE_HEADERS = (TRACEPARENT, "tracestate")


@dataclass(frozen=True)
class Tracing:
    """The tracer for this process's spans (None: tracing off) and what to shut down."""

    tracer: Tracer | None = None
    provider: TracerProvider | None = None

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    @classmethod
    def off(cls) -> Tracing:
        return cls()

    @classmethod
    def of(cls, provider: TracerProvider) -> Tracing:
        """Tracing into a provider the caller owns (tests: the in-memory exporter)."""
        return cls(provider.get_tracer(TRACER_NAME))

    def shutdown(self) -> None:
        """Flush and stop the provider this object owns (a no-op when off or given)."""
        if self.provider is not None:
            self.provider.shutdown()


def build_tracing(settings: Settings) -> Tracing:
    """The tracer provider the settings ask for (only ``bootstrap.py`` calls this)."""
    if not settings.tracing_enabled:
        return Tracing.off()
    # Imported here: a process with tracing off never loads the SDK or the exporter.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    exporter: SpanExporter
    if settings.otel_traces_exporter == "console":
        # The SDK's default ``out`` is the sys.stdout of its import time: pass the
        # current one (a process that redirected stdout since then writes there).
        exporter = ConsoleSpanExporter(out=sys.stdout)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Headers, certificates, compression and timeout: the exporter's own
        # OTEL_EXPORTER_OTLP_* variables (they may hold credentials: never logged here).
        exporter = OTLPSpanExporter(endpoint=settings.otel_traces_endpoint)
    resource = Resource.create(
        {SERVICE_NAME: settings.otel_service_name or settings.source_service}
    )
    provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER, as the SDK
    provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info(
        "tracing on",
        extra={"exporter": settings.otel_traces_exporter, "service": resource.attributes},
    )
    return Tracing(provider.get_tracer(TRACER_NAME), provider)


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None


def context_from_headers(headers: Iterable[tuple[str, bytes | None]] | None) -> Context | None:
    """The trace context of a Kafka record's W3C headers (None: no valid ``traceparent``)."""
    if not headers:
        return None
    carrier: dict[str, str] = {}
    for key, value in headers:
        if key in _TRACE_HEADERS and key not in carrier:  # the first of each, as W3C says
            text = _text(value)
            if text is not None:
                carrier[key] = text
    return context_of(carrier)


def with_traceparent(
    headers: Sequence[tuple[str, bytes]], traceparent: str | None
) -> list[tuple[str, bytes]]:
    """``headers`` whose trace context is ``traceparent`` (unchanged when None)."""
    if traceparent is None:
        return list(headers)
    kept = [(k, v) for k, v in headers if k not in _TRACE_HEADERS]
    return [*kept, (TRACEPARENT, traceparent.encode("ascii"))]


@contextlib.contextmanager
def ending(spans: Sequence[Span]) -> Iterator[None]:
    """End every span in ``spans`` (a list the block may still add to) when the block
    ends; when it raises, record the error on each of them first."""
    try:
        yield
    except BaseException as error:
        for span in spans:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        raise
    finally:
        for span in spans:
            span.end()
