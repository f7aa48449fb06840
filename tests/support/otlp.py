"""A minimal OTLP/HTTP trace collector on a loopback port, for the tests.

It accepts ``POST /v1/traces`` and decodes each body as the protobuf
``ExportTraceServiceRequest`` the OpenTelemetry protocol defines.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


class Collector:
    """``with Collector() as c:`` serves on ``c.endpoint`` until the block ends."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []  # (path, content type, body)
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with collector._lock:
                    collector.requests.append(
                        (self.path, self.headers.get("Content-Type", ""), body)
                    )
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self._server = HTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        """The base URL, as OTEL_EXPORTER_OTLP_ENDPOINT takes it."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Collector:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def exports(self) -> list[ExportTraceServiceRequest]:
        with self._lock:
            return [ExportTraceServiceRequest.FromString(body) for _, _, body in self.requests]

    def spans(self) -> list[tuple[str, Any]]:
        """Every span received: (service.name, span)."""
        found = []
        for request in self.exports():
            for resource_spans in request.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                for scope in resource_spans.scope_spans:
                    found += [(attributes.get("service.name", ""), s) for s in scope.spans]
        return found
