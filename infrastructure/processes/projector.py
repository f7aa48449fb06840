"""The slot-count projector: event store notification log -> Redis slot view.

It catches up in pages (one pipelined round trip per page), then follows the
store live (PostgreSQL LISTEN/NOTIFY), both in the shared follower loop
(``infrastructure/processes/follower.py``). If the
position in Redis disappears (Redis flushed or restarted empty) it notices,
on the next write or within ``watchdog_seconds`` when idle, and replays from 0;
the per-batch version guard makes any replayed event a no-op. The same
happens when the position moves back behind what this projector last wrote
(an append-only file that lost its last second).

A position AHEAD of the store's last event (PostgreSQL restored from an older
backup) cannot be repaired by a replay: the read model holds events the store
no longer has. The projector checks for it when it (re)starts following the
store and every ``ahead_check_seconds`` while idle, logs it and runs a
drop-and-replace rebuild (``infrastructure/redis/rebuild.py``).

With tracing on, every event stored with a ``traceparent`` gets a ``project``
span under it, covering the page's write to Redis (a replay continues the
traces of the events it re-applies; an event without one starts no trace).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence

from eventsourcing.persistence import Notification, Tracking
from opentelemetry.trace import Span

from application.service import BatchService
from application.tracing import context_of
from infrastructure import metrics
from infrastructure.postgres import timeouts as pg_timeouts
from infrastructure.postgres.listen import Subscription
from infrastructure.postgres.recorder import traceparent_of_notification
from infrastructure.postgres.shared_log import shared_log
from infrastructure.postgres.store import StoreMissing
from infrastructure.processes.follower import follow, run_blocking
from infrastructure.redis.rebuild import RebuildSummary, rebuild
from infrastructure.redis.view import PositionLost, RedisSlotView
from infrastructure.settings import Settings
from infrastructure.tracing import Tracing, ending
from infrastructure.transient import described, is_transient
from projections.slot_view import VersionGap

__all__ = ["Projector", "RebuildSummary", "rebuild"]
log = logging.getLogger(__name__)


class StoreEmpty(StoreMissing):
    """The store has no events at all while the read model has seen some: never rebuilt
    automatically (a wrong DATABASE_URL or DATABASE_SCHEMA would wipe the read model)."""


class StoreBehind(RuntimeError):
    """The read model's position is ahead of the store's last event (a restore)."""


class Projector:
    """Keeps the Redis slot view up to date (a ``Follower``).

    Built by ``Bootstrap.projector()``, which hands it its collaborators: the
    service (the store), the view, and ``listener`` (a new subscription to the
    process's LISTEN on the events table's channel, one per ``serve``); it
    closes none of them.
    ``serve(stop)`` runs it on the caller's event loop, ``run(stop)`` in this
    thread (blocking).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        service: BatchService,
        view: RedisSlotView,
        listener: Callable[[], Subscription],
        page_size: int = 500,
        watchdog_seconds: float = 0.5,
        ahead_check_seconds: float = 5.0,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.ahead_check_seconds = ahead_check_seconds
        self.rebuilds = 0  # times the read model was ahead of the store and rebuilt
        # Its collaborators are the caller's (infrastructure/bootstrap.py): it closes none.
        self.tracer = (tracing or Tracing.off()).tracer
        self.service = service
        self.view = view
        self._new_listener = listener  # a new subscription each serve (closed by follow)
        self.page_size, self.watchdog_seconds = page_size, watchdog_seconds
        self.replays = 0  # times the position was lost and the log replayed from 0
        self._listener: Subscription | None = None
        self._after: int | None = None  # the position this projector last wrote
        self._restart = True  # (re)read the position from Redis before the next page
        self._from_zero = False  # replay the whole log (the position was lost)
        self._restore = False  # rebuild first (the read model is ahead of the store)
        self._catching_up = True
        self._next_ahead_check = 0.0
        self._confirmed_at = 0.0  # when a write or a read last found the position in place
        self._streak = 0  # replays from 0 in a row that did not finish catching up
        self.applied: int | None = None  # the last position applied (for the stall watchdog)

    # ------------------------------------------------------------- running

    def run(self, stop: threading.Event) -> None:
        """Project until ``stop`` is set (blocking)."""
        run_blocking(self.serve, stop)

    async def serve(self, stop: asyncio.Event) -> None:
        """Project until ``stop`` is set."""
        listener = self._listener = self._new_listener()
        self._restart = True
        await follow(
            self,
            shared_log(self.service),
            listener,
            stop,
            page_size=self.page_size,
            idle_timeout=self.watchdog_seconds,
        )

    async def recycle(self) -> None:
        """The stall watchdog's lever: free calls blocked on a silent connection and
        reopen the LISTEN connection; the loop then reads with fresh connections."""
        pg_timeouts.recycle()
        self.view.disconnect()
        if self._listener is not None:
            await self._listener.recycle()

    # ------------------------------------------------------------ Follower

    async def read_after(self) -> int | None:
        if self._restore:
            summary = await asyncio.to_thread(
                rebuild, self.settings, service=self.service, view=self.view
            )
            self.rebuilds, self._restore, self._restart = self.rebuilds + 1, False, True
            log.warning("slot view rebuilt: %d events, %d batches", summary.events, summary.batches)
        if self._restart:
            position = None if self._from_zero else await asyncio.to_thread(self.view.position)
            await asyncio.to_thread(self._check_ahead, position)
            self._after, self.applied = position, position or 0
            self._restart, self._from_zero, self._catching_up = False, False, True
        return self._after

    async def handle(self, page: Sequence[Notification], after: int | None) -> None:
        self._after = await asyncio.to_thread(self._apply, page, after)

    async def caught_up(self) -> None:
        """Once caught up, and whenever idle: is the position still in Redis (flushed,
        or an append-only file that lost its last writes)? Is it ahead of the store?
        Asked at most every ``watchdog_seconds``: a page's write checks the position
        itself, so under a steady light load (caught up after every page) no read is
        added to each page."""
        if self._catching_up:
            self._catching_up, self._streak = False, 0
            self._next_ahead_check = time.monotonic() + self.ahead_check_seconds
            return
        now = time.monotonic()
        ahead_due = now >= self._next_ahead_check
        if now - self._confirmed_at < self.watchdog_seconds and not ahead_due:
            return  # a page's write confirmed the position that recently (ADVANCE checks it)
        self._confirmed_at = now
        position = await asyncio.to_thread(self.view.position)
        if self._after is not None and (position is None or position < self._after):
            raise PositionLost("the position disappeared from Redis or moved back while idle")
        if ahead_due:
            self._next_ahead_check = time.monotonic() + self.ahead_check_seconds
            await asyncio.to_thread(self._check_ahead, position)

    async def failed(self, error: Exception) -> bool:
        if isinstance(error, PositionLost | VersionGap):
            if self._streak >= 3:  # replays that never got through the catch-up
                raise error
            log.warning("slot view out of step with the store (%s); replaying from 0", error)
            metrics.READ_MODEL_RESETS.labels("replay").inc()
            self.replays, self._streak = self.replays + 1, self._streak + 1
            self._from_zero = self._restart = True
            return False
        if isinstance(error, StoreBehind):
            log.warning(
                "slot view ahead of the event store (%s): the store was restored from an "
                "older backup? Rebuilding the read model from the store",
                error,
            )
            metrics.READ_MODEL_RESETS.labels("rebuild").inc()
            self._restore = True
            return False
        if is_transient(error):  # (also a connection the stall watchdog closed mid-read)
            log.warning("slot projector: %s; retrying", described(error, self.settings))
            self._restart = True
            return True
        raise error

    # -------------------------------------------------------------- helpers

    def _check_ahead(self, position: int | None) -> None:
        store, window_ahead = shared_log(self.service).check_head(
            lambda: self.service.recorder.max_notification_id() or 0
        )
        if window_ahead:
            log.warning("the event store is behind what was read from it (restored?)")
        if position is not None and position > store:
            if store == 0:  # not a restore: most likely the wrong database or schema
                s = self.settings
                raise StoreEmpty(
                    f"refusing to project: the event store (DATABASE_SCHEMA={s.database_schema} "
                    f"of DATABASE_URL) is empty but the read model (REDIS_KEY_PREFIX="
                    f"{s.redis_key_prefix!r}) has seen position {position}, so following it "
                    "would wipe the read model; check DATABASE_URL and DATABASE_SCHEMA, or "
                    "empty the read model on purpose with `batchctl rebuild --force`"
                )
            raise StoreBehind(f"read model at position {position}, store's last event {store}")

    def _apply(self, notifications: Sequence[Notification], after: int | None) -> int | None:
        name = self.service.name
        decoded = shared_log(self.service).events(notifications)
        events = [(e, Tracking(name, n.id)) for n, e in zip(notifications, decoded, strict=True)]
        spans = self._spans(notifications) if self.tracer is not None else []
        started = time.perf_counter()
        with ending(spans):
            position = self.view.apply(events, after)
        self._confirmed_at = time.monotonic()  # (its ADVANCE found the position in place)
        metrics.PROJECTION_APPLY_SECONDS.observe(time.perf_counter() - started)
        self.applied = position
        return position

    def _spans(self, notifications: Sequence[Notification]) -> list[Span]:
        """A ``project`` span for each event stored with a trace context."""
        assert self.tracer is not None
        spans = []
        for n in notifications:
            traceparent = traceparent_of_notification(n)
            parent = context_of({"traceparent": traceparent}) if traceparent else None
            if parent is not None:
                spans.append(
                    self.tracer.start_span(
                        "project",
                        context=parent,
                        attributes={
                            "db.system.name": "redis",
                            "batch_slot.notification_id": n.id,
                            "batch_slot.page.events": len(notifications),
                        },
                    )
                )
        return spans
