"""OTEL_EXPORTER_OTLP_ENDPOINT turns tracing on: spans reach an OTLP/HTTP collector
(a loopback one that decodes the protobuf request the standard defines)."""

from __future__ import annotations

from infrastructure.bootstrap import Bootstrap
from infrastructure.settings import load_settings
from tests.support.otlp import Collector


def test_spans_are_exported_over_otlp_http_when_the_endpoint_is_set() -> None:
    with Collector() as collector:
        settings = load_settings(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "SOURCE_SERVICE": "slots-x"}
        )
        container = Bootstrap(settings)
        tracer = container.tracing.tracer
        assert tracer is not None
        tracer.start_span("exported-span").end()
        container.close()  # flushes the batching processor
        assert collector.requests, "nothing reached the collector"
        path, content_type, _ = collector.requests[0]
        assert path == "/v1/traces" and content_type == "application/x-protobuf"
        assert [(service, s.name) for service, s in collector.spans()] == [
            ("slots-x", "exported-span")
        ]
