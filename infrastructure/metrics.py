"""Prometheus metrics of every process (served on METRICS_PORT by infrastructure/health/)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
CONSUMER_LAG = Gauge(
    "batchslot_consumer_lag",
    "Inbound records waiting per partition: the highwater minus the worker's position.",
    ["group", "topic", "partition"],
)
READY = Gauge(
    "batchslot_ready", "1 while /readyz would answer 200 (refreshed at every scrape), else 0."
)
READINESS_CHECK = Gauge(
    "batchslot_readiness_check_ok", "1 while the named /readyz check passes, else 0.", ["check"]
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

# Latency, pending age and build (observed in infrastructure/health/metering.py
# and at the few places named in each help text).
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
COMMAND_SECONDS = Histogram(
    "batchslot_command_seconds",
    "Worker: deciding and storing one poll's commands (one BatchService.execute call that "
    "succeeded; a poll's commands are decided together and stored in one transaction).",
    buckets=_SECONDS,
)
PRODUCE_TO_RECORD_SECONDS = Histogram(
    "batchslot_produce_to_record_seconds",
    "Worker: from an inbound record's Kafka timestamp (producer CreateTime or broker "
    "LogAppendTime) to its command recorded in the event store; recorded commands only.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0),
)
OUTBOX_PUBLISH_SECONDS = Histogram(
    "batchslot_outbox_publish_seconds",
    "Outbox: publishing one page (sent, acknowledged by Kafka, position recorded).",
    buckets=_SECONDS,
)
PROJECTION_APPLY_SECONDS = Histogram(
    "batchslot_projection_apply_seconds",
    "Projector: applying one page of events to the Redis read model.",
    buckets=_SECONDS,
)
PENDING_CONTENT_AGE = Gauge(
    "batchslot_pending_content_age_seconds",
    "Age of the oldest content pending for a batch not yet registered (0: none); computed "
    "from the event store every PENDING_AGE_INTERVAL_SECONDS by worker processes.",
)
BUILD_INFO = Gauge(
    "batchslot_build_info",
    "Always 1; the labels say which build runs (package version, Python version).",
    ["version", "python"],
)

# Follower leases (infrastructure/processes/leadership.py): one instance per follower per store.
FOLLOWER_LEADER = Gauge(
    "batchslot_follower_leader",
    "1 while this instance leads the follower (projector, outbox, due_index), 0 standing by.",
    ["follower"],
)
FOLLOWER_TAKEOVERS = Counter(
    "batchslot_follower_takeovers_total",
    "Times this instance took a follower's lease and started running it.",
    ["follower"],
)
FOLLOWER_TAKEOVER_SECONDS = Histogram(
    "batchslot_follower_takeover_seconds",
    "Takeovers: seconds from the previous holder's last sign of life (its session's last "
    "statement, as this instance last saw it) to taking the follower's lease: about how long "
    "the follower ran nowhere (a heartbeat or two after a holder died, LEASE_TTL_SECONDS and "
    "a heartbeat after one stopped or was partitioned; 0 when nobody held it before).",
    ["follower"],
    buckets=(0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0),
)
FOLLOWER_LEASE_LOSSES = Counter(
    "batchslot_follower_lease_losses_total",
    "Times this instance stopped leading a follower: lost (its lease session ended), fenced "
    "(the follower found the lease gone before a page or a position write), released "
    "(handed over to a peer holding fewer followers).",
    ["follower", "reason"],
)
