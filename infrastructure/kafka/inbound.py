"""The worker's side of the tolerant reader: parse, then count and log what was ignored.

``application.messages.parse_inbound`` stays pure and only names the unknown
fields; here they become ``batchslot_unknown_fields_total{topic, where}`` and a
DEBUG log line (field names only, never their values), so an operator sees an
upstream release that adds fields without its traffic going to the DLQ.
"""

from __future__ import annotations

import logging

from application.messages import Parsed, TopicKind, WireProfile, parse_inbound
from infrastructure import metrics

log = logging.getLogger("batchslot.inbound")
MAX_NAMES_LOGGED = 20


def parse_counted(
    kind: TopicKind, topic: str, value: bytes | None, profile: WireProfile = "native"
) -> Parsed:
    """The message parsed (or InvalidMessage), its ignored fields counted and logged."""
    parsed = parse_inbound(kind, value, profile)
    if parsed.ignored:
        count_ignored(topic, parsed)
    return parsed


def count_ignored(topic: str, parsed: Parsed) -> None:
    for where, names in (("envelope", parsed.ignored_envelope), ("data", parsed.ignored_data)):
        if names:
            metrics.UNKNOWN_FIELDS.labels(topic, where).inc(len(names))
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "unknown fields ignored",
            extra={
                "topic": topic,
                "event_type": parsed.event_type,
                "correlation_id": parsed.command.correlation_id,
                "batch_id": parsed.command.batch_id,
                "envelope_fields": [n[:64] for n in parsed.ignored_envelope[:MAX_NAMES_LOGGED]],
                "data_fields": [n[:64] for n in parsed.ignored_data[:MAX_NAMES_LOGGED]],
            },
        )
