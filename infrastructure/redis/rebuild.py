"""Rebuild the Redis slot view from the event store, while readers keep reading.

The log is replayed (up to the position at the start) under shadow keys that
carry the same hash tags as the live ones; then each batch is swapped in by
one Lua script (RENAME of its three keys) unless the
live batch is already newer, so a reader sees the old model or the new one,
never a missing or partial batch and never a count going backwards. A running
projector may go on writing the live keys meanwhile.

Drop and replace: a live batch newer than the shadow is kept only while the
store has its version (a running projector got there first). If the store no
longer has it (PostgreSQL restored from an older backup), the batch is
replaced by the store's; live batches the store does not have are deleted;
and a position ahead of the store's last event is SET back to the rebuilt
position, so the read model equals the store again.

The caller gives the store's service and the live view (``batchctl rebuild``
those of its container, the projector its own when it finds the read model
ahead of the store) and closes them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import Tracking

from application.service import BatchService
from domain.batch import Batch
from infrastructure.redis.view import RedisSlotView
from infrastructure.settings import Settings

Progress = Callable[[int, int], None]  # (position reached, target position)


@dataclass(frozen=True)
class RebuildSummary:
    events: int
    batches: int
    seconds: float


def rebuild(
    settings: Settings,
    progress: Progress | None = None,
    *,
    service: BatchService,
    view: RedisSlotView,
    page_size: int = 1000,
) -> RebuildSummary:
    """Rebuild ``view``, the live read model, from ``service``'s store (both the caller's)."""
    started = time.monotonic()
    app, live = service, view
    shadow = live.shadow(uuid.uuid4().hex)
    try:
        target = app.recorder.max_notification_id() or 0
        events, batch_ids = _replay(app, shadow, target, page_size, progress)
        ordered = sorted(batch_ids)
        for i in range(0, len(ordered), 500):
            chunk = ordered[i : i + 500]
            live.swap_in(shadow, chunk, force=_lost_by_store(app, live, shadow, chunk))
        _drop_strays(app, live, batch_ids)
        position = live.position()
        if position is not None and position > (app.recorder.max_notification_id() or 0):
            live.set_position(target)  # ahead of the store: it was restored from a backup
        elif target:
            live.advance_position(target)
    finally:
        _delete_shadow(shadow)
    return RebuildSummary(events, len(batch_ids), time.monotonic() - started)


def _replay(
    app: BatchService, shadow: RedisSlotView, target: int, page_size: int, progress: Progress | None
) -> tuple[int, set[str]]:
    position: int | None = None
    events, batch_ids = 0, set[str]()
    while target:
        page = app.recorder.select_notifications(
            start=position or 0, limit=page_size, stop=target, inclusive_of_start=False
        )
        decoded: list[tuple[Any, Tracking]] = [
            (app.mapper.to_domain_event(n), Tracking(app.name, n.id)) for n in page
        ]
        position = shadow.apply(decoded, position)
        events += len(page)
        batch_ids.update(event.batch_id for event, _ in decoded)
        if progress is not None:
            progress(position or 0, target)
        if len(page) < page_size:
            break
    return events, batch_ids


def _lost_by_store(
    app: BatchService, live: RedisSlotView, shadow: RedisSlotView, batch_ids: list[str]
) -> set[str]:
    """Batches whose live version is newer than the shadow's AND than the store's."""
    ahead = live.versions(batch_ids)
    rebuilt = shadow.versions(batch_ids)
    lost = set[str]()
    for batch_id in batch_ids:
        if ahead[batch_id] <= rebuilt[batch_id]:
            continue
        last = app.recorder.select_events(Batch.create_id(batch_id), desc=True, limit=1)
        if not last or last[0].originator_version < ahead[batch_id]:
            lost.add(batch_id)
    return lost


def _drop_strays(app: BatchService, live: RedisSlotView, known: set[str]) -> None:
    """Delete the live keys of batches the event store does not have."""
    for batch_id in list(live.batch_ids()):
        if batch_id in known or app.recorder.select_events(Batch.create_id(batch_id), limit=1):
            continue
        model = live.read_batch(batch_id)
        if model is not None:
            live.drop(batch_id, seen_version=model.summary.get("version", ""))


def _delete_shadow(shadow: RedisSlotView) -> None:
    keys = list(shadow.client.scan_iter(match=f"{shadow.prefix}*", count=1000))
    for i in range(0, len(keys), 500):
        shadow.client.delete(*keys[i : i + 500])
