"""Prometheus metrics of every process (scraped from METRICS_PORT when set)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, start_http_server

MESSAGES = Counter(
    "batchslot_messages_consumed_total",
    "Inbound messages by topic and outcome (recorded, noop, rejected, invalid).",
    ["topic", "outcome"],
)
COMMANDS = Counter(
    "batchslot_commands_total", "Commands by type and result.", ["command", "result"]
)
CONFLICTS = Counter(
    "batchslot_version_conflicts_total", "Appends that lost the race and were retried."
)
DLQ = Counter("batchslot_dlq_messages_total", "Messages sent to the dead-letter topic.", ["reason"])
UNDECODABLE = Counter(
    "batchslot_undecodable_batches_total",
    "Inbound record batches that could not be decoded, dead-lettered and skipped.",
    ["topic"],
)
TRANSIENT = Counter(
    "batchslot_transient_failures_total", "Transient failures retried with backoff.", ["where"]
)
PROJECTION_LAG = Gauge(
    "batchslot_projection_lag_events", "Stored events not yet in the Redis read model."
)
OUTBOX_LAG = Gauge("batchslot_outbox_lag_events", "Stored events not yet published to Kafka.")


def serve(port: int | None) -> None:
    """Expose /metrics on the given port (no-op when unset)."""
    if port is not None:
        start_http_server(port, addr="0.0.0.0")  # noqa: S104 - scraped from outside
