"""The timeout sweep: ask the aggregate to close what is due.

It reads candidates from the read model's deadline index and sends commands;
the aggregate decides (a batch not yet due, or already closed, is a no-op),
so duplicate sweeps from several instances are harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import Protocol
from uuid import uuid4

from application.commands import AnyCommand, ExpirePending, TimeOutBatch
from application.service import BatchService, Result
from infrastructure import metrics

log = logging.getLogger("batchslot.sweep")


class DeadlineIndex(Protocol):
    def due_for_timeout(self, now: datetime) -> list[str]: ...
    def due_for_expiry(self, now: datetime, ttl_seconds: int) -> list[str]: ...


PAGE = 500  # commands per execute(): bounded loads and transactions after an outage


def sweep_once(service: BatchService, index: DeadlineIndex, page: int = PAGE) -> list[Result]:
    """Close every due batch, ``page`` commands (one load and one append each) at a time."""
    now = service.clock()
    cid = str(uuid4())
    commands: list[AnyCommand] = [
        TimeOutBatch(batch_id=b, correlation_id=cid) for b in index.due_for_timeout(now)
    ]
    commands += [
        ExpirePending(batch_id=b, correlation_id=cid)
        for b in index.due_for_expiry(now, service.pending_ttl_seconds)
    ]
    results: list[Result] = []
    for start in range(0, len(commands), page):
        part = service.execute(commands[start : start + page])
        results += part
        closed = [r.command.batch_id for r in part if r.outcome == "recorded"]
        if closed:
            log.info("sweep closed batches", extra={"correlation_id": cid, "batches": closed})
    return results


async def run_sweep(
    service: BatchService, index: DeadlineIndex, interval: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            await asyncio.to_thread(sweep_once, service, index)
        except Exception as e:  # a sweep must never take the process down
            metrics.TRANSIENT.labels("sweep").inc()
            log.warning("sweep failed, will retry", extra={"error": repr(e)[:200]})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
