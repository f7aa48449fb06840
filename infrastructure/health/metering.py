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
from collections.abc import Callable
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from application.service import Result
from infrastructure import metrics
from infrastructure.postgres.due_index import DueIndex

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


def pending_content_age(index: DueIndex, now: datetime) -> float:
    """Seconds since the oldest content still held for a batch never registered (0: none).

    Read from the due-batch index (``batch_due.pending_since``, indexed), which the
    due-index follower in the same process keeps up to date: one index lookup, not
    a scan of the events table.
    """
    oldest = index.oldest_pending_since()
    return 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())


async def report_pending_age(
    index: DueIndex, clock: Callable[[], datetime], interval: float, stop: asyncio.Event
) -> None:
    """Keep ``batchslot_pending_content_age_seconds`` fresh (interval 0: never)."""
    while interval > 0 and not stop.is_set():
        try:
            age = await asyncio.to_thread(lambda: pending_content_age(index, clock()))
            metrics.PENDING_CONTENT_AGE.set(age)
        except Exception as e:  # a gauge must never stop the service
            log.debug("pending age probe failed", extra={"error": repr(e)[:200]})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
