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
UNKNOWN_FIELDS = Counter(
    "batchslot_unknown_fields_total",
    "Unknown inbound fields ignored by the tolerant reader, by topic and where (envelope, data).",
    ["topic", "where"],
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
READ_MODEL_RESETS = Counter(
    "batchslot_read_model_resets_total",
    "Times the projector found the read model out of step with the store: replay "
    "(position lost or moved back) or rebuild (position ahead of the store: a restore).",
    ["action"],
)
OUTBOX_LAG = Gauge("batchslot_outbox_lag_events", "Stored events not yet published to Kafka.")
OUTBOX_PARKED = Gauge(
    "batchslot_outbox_parked_events",
    "Stored events parked by the outbox (refused by the producer or broker, or waiting "
    "behind a refused event of their batch); retried periodically.",
)
OUTBOX_REFUSED = Counter(
    "batchslot_outbox_refused_total",
    "Publications of one event refused by the producer or broker, by error.",
    ["error"],
)


def serve(port: int | None) -> None:
    """Expose /metrics on the given port (no-op when unset)."""
    if port is not None:
        start_http_server(port, addr="0.0.0.0")  # noqa: S104 - scraped from outside


STALLS = Counter(
    "batchslot_stalls_total",
    "Stall watchdog actions by part (worker, projector, outbox): recycled, exit.",
    ["part", "action"],
)
STALLED = Gauge(
    "batchslot_stalled",
    "1 while the part has work waiting and made no progress for STALL_TIMEOUT_SECONDS.",
    ["part"],
)
