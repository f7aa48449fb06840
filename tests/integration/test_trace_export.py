"""OTEL_EXPORTER_OTLP_ENDPOINT turns tracing on: spans reach an OTLP/HTTP collector.

The collector is a small HTTP server on a loopback port that decodes what it
receives as the OTLP protobuf request the standard defines.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from infrastructure.bootstrap import Bootstrap
from infrastructure.settings import load_settings


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    received: list[tuple[str, str, bytes]] = []
    handler = type("Collector", (_Collector,), {"received": received})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


def test_spans_are_exported_over_otlp_http_when_the_endpoint_is_set(
    collector: tuple[str, list[tuple[str, str, bytes]]],
) -> None:
    endpoint, received = collector
    settings = load_settings(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "SOURCE_SERVICE": "slots-export-test"}
    )
    container = Bootstrap(settings)
    tracer = container.tracing.tracer
    assert tracer is not None
    tracer.start_span("exported-span").end()
    container.close()  # flushes the batching processor
    assert received, "nothing reached the collector"
    path, content_type, body = received[0]
    assert path == "/v1/traces" and content_type == "application/x-protobuf"
    request = ExportTraceServiceRequest.FromString(body)
    [resource_spans] = request.resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert service["service.name"] == "slots-export-test"
    names = [s.name for scope in resource_spans.scope_spans for s in scope.spans]
    assert names == ["exported-span"]
