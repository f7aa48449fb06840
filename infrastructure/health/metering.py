"""Latency observations, the pending content age and the build info gauge.

The histograms and gauges are declared in ``infrastructure/metrics.py``; the
worker, outbox and projector observe them where the work is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from eventsourcing.utils import get_topic

from application.service import BatchService, Result
from domain import Batch
from infrastructure import metrics

log = logging.getLogger("batchslot.metering")


def set_build_info() -> None:
    try:
        release = version("batch-slot-service")
    except PackageNotFoundError:  # a source tree that was never installed
        release = "unknown"
    metrics.BUILD_INFO.labels(release, platform.python_version()).set(1)


def observe_recorded(record: Any, result: Result) -> None:
    """Produce -> recorded, from the inbound record's Kafka timestamp (milliseconds)."""
    timestamp = getattr(record, "timestamp", None)
    if result.outcome != "recorded" or not isinstance(timestamp, int) or timestamp <= 0:
        return
    # Clocks of producer and worker may differ a little: never a negative duration.
    metrics.PRODUCE_TO_RECORD_SECONDS.observe(max(0.0, time.time() - timestamp / 1000))


# --------------------------------------------------------- pending content age

# The condition of ``EventStoreReader.pending_streams`` (batchctl pending): a stream
# with content pended and neither registered nor expired; its oldest ContentPended.
_OLDEST_PENDING = (
    "SELECT min((convert_from(e.state, 'UTF8')::jsonb #>> '{{timestamp,_data_}}')::timestamptz) "
    "FROM {table} e WHERE e.topic = %s AND e.originator_id IN ("
    "SELECT originator_id FROM {table} GROUP BY originator_id "
    "HAVING NOT bool_or(topic = ANY(%s)))"
)


def oldest_pending_at(service: BatchService) -> datetime | None:
    """When the oldest content still pending registration arrived (None: nothing pending).

    One query on the service's pool: the table has no index on the event type,
    so it reads the whole events table; PENDING_AGE_INTERVAL_SECONDS paces it.
    """
    recorder: Any = service.recorder
    table = f'"{recorder.datastore.schema}"."{recorder.events_table_name}"'
    query = _OLDEST_PENDING.format(table=table)
    pended = _topic("ContentPended")
    closing = [_topic("BatchRegistered"), _topic("PendingContentExpired")]
    with recorder.datastore.transaction(commit=False) as cursor:
        cursor.execute(query, [pended, closing])
        row = cursor.fetchone()
    value = None if row is None else next(iter(row.values()))
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _topic(event_type: str) -> str:
    return get_topic(vars(Batch)[event_type])


def pending_content_age(service: BatchService) -> float:
    oldest = oldest_pending_at(service)
    return 0.0 if oldest is None else max(0.0, (service.clock() - oldest).total_seconds())


async def report_pending_age(service: BatchService, interval: float, stop: asyncio.Event) -> None:
    """Keep ``batchslot_pending_content_age_seconds`` fresh (interval 0: never)."""
    while interval > 0 and not stop.is_set():
        try:
            age = await asyncio.to_thread(pending_content_age, service)
            metrics.PENDING_CONTENT_AGE.set(age)
        except Exception as e:  # a gauge must never stop the service
            log.debug("pending age probe failed", extra={"error": repr(e)[:200]})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
