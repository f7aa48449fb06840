"""The slot-count projector: event store notification log -> Redis slot view.

It catches up in pages (one pipelined round trip per page), then follows the
store live through the library's PostgreSQL LISTEN/NOTIFY subscription. If the
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
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import Notification, Tracking

from application.service import BatchService
from infrastructure import metrics
from infrastructure.bootstrap import Bootstrap
from infrastructure.postgres import timeouts as pg_timeouts
from infrastructure.redis.rebuild import RebuildSummary, rebuild
from infrastructure.redis.view import PositionLost, RedisSlotView
from infrastructure.settings import Settings
from infrastructure.transient import TRANSIENT
from projections.slot_view import VersionGap

__all__ = ["Projector", "RebuildSummary", "rebuild", "run_projector"]
log = logging.getLogger(__name__)


class StoreBehind(RuntimeError):
    """The read model's position is ahead of the store's last event (a restore)."""


class Projector:
    """Keeps the Redis slot view up to date; ``start()`` runs it in a thread."""

    def __init__(
        self,
        settings: Settings,
        *,
        service: BatchService | None = None,
        view: RedisSlotView | None = None,
        page_size: int = 500,
        watchdog_seconds: float = 0.5,
        ahead_check_seconds: float = 5.0,
    ) -> None:
        self.settings = settings
        self.ahead_check_seconds = ahead_check_seconds
        self.rebuilds = 0  # times the read model was ahead of the store and rebuilt
        self._owned = (service is None, view is None)
        self.service = service or Bootstrap(settings).batch_service()
        self.view = view or RedisSlotView.from_settings(settings)
        self.page_size, self.watchdog_seconds = page_size, watchdog_seconds
        self.replays = 0  # times the position was lost and the log replayed from 0
        self._stop, self._dead, self._lost = threading.Event(), threading.Event(), False
        self._ahead = False
        self._lock = threading.Lock()
        self._subscription: Any = None
        self._believed: int | None = None  # the position this projector last wrote
        self._streak = 0  # replays from 0 in a row that did not finish catching up
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.applied: int | None = None  # the last position applied (for the stall watchdog)

    def start(self) -> Projector:
        self._thread = threading.Thread(target=self._main, name="slot-projector", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._lock:
            if self._subscription is not None:
                self._subscription.stop()
        if self._thread is not None:
            self._thread.join(timeout)
        self.close()

    def recycle(self) -> None:
        """The stall watchdog's lever: end the live subscription (its LISTEN connection
        may be stranded) and free calls blocked on a silent connection; ``run`` then
        catches up with fresh connections and subscribes again."""
        with self._lock:
            if self._subscription is not None:
                self._subscription.stop()
        pg_timeouts.recycle()
        self.view.client.connection_pool.disconnect(inuse_connections=True)

    def close(self) -> None:
        if self._owned[0]:
            self.service.close()
        if self._owned[1]:
            self.view.close()

    def wait_for(self, position: int | None, timeout: float = 5.0) -> None:
        """Block until ``position`` is in the view; re-raise the thread's error."""
        try:
            self.view.wait(self.view.application_name, position, timeout, interrupt=self._dead)
        except Exception:
            if self.error is not None:
                raise self.error from None
            raise

    def _main(self) -> None:
        try:
            self.run(self._stop)
        except BaseException as error:
            self.error = error
            log.exception("slot projector stopped by an error")
        finally:
            self._dead.set()

    def run(self, stop: threading.Event) -> None:
        """Project until ``stop`` is set (blocking)."""
        from_zero, delay, restored = False, 0.1, False
        while not stop.is_set():
            try:
                if restored:
                    summary = rebuild(self.settings, service=self.service, view=self.view)
                    self.rebuilds, restored = self.rebuilds + 1, False
                    log.warning(
                        "slot view rebuilt: %d events, %d batches", summary.events, summary.batches
                    )
                self._run_once(stop, from_zero)
                from_zero, delay = False, 0.1
            except (PositionLost, VersionGap) as lost:
                if self._streak >= 3:  # replays that never got through the catch-up
                    raise
                log.warning("slot view out of step with the store (%s); replaying from 0", lost)
                metrics.READ_MODEL_RESETS.labels("replay").inc()
                self.replays, self._streak, from_zero = self.replays + 1, self._streak + 1, True
            except StoreBehind as ahead:
                log.warning(
                    "slot view ahead of the event store (%s): the store was restored from an "
                    "older backup? Rebuilding the read model from the store",
                    ahead,
                )
                metrics.READ_MODEL_RESETS.labels("rebuild").inc()
                restored = True
            except TRANSIENT as error:
                log.warning("slot projector: %s; retrying in %.1fs", type(error).__name__, delay)
                stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def _run_once(self, stop: threading.Event, from_zero: bool) -> None:
        recorder = self.service.recorder
        position = None if from_zero else self.view.position()
        self._check_ahead(position)
        self.applied = position or 0
        while not stop.is_set():  # catch up, one page per round trip
            page = recorder.select_notifications(
                start=position or 0, limit=self.page_size, inclusive_of_start=False
            )
            position = self._apply(page, position)
            if len(page) < self.page_size:
                break
        self._lost, self._believed, self._streak = False, position, 0
        with recorder.subscribe(gt=position) as subscription:  # then follow live
            with self._lock:
                self._subscription = subscription
            if stop.is_set():
                subscription.stop()
            done = threading.Event()
            watchdog = threading.Thread(target=self._watch, args=(subscription, stop, done))
            watchdog.start()
            try:
                while True:
                    page = _next_page(subscription)  # blocks until at least one event
                    if not page:
                        break
                    self._believed = position = self._apply(page, position)
            finally:
                done.set()
                watchdog.join()
                with self._lock:
                    self._subscription = None
        if self._ahead:
            self._ahead = False
            self._check_ahead(self.view.position())
        if self._lost:
            raise PositionLost("the position disappeared from Redis or moved back while idle")

    def _check_ahead(self, position: int | None) -> None:
        store = self.service.recorder.max_notification_id() or 0
        if position is not None and position > store:
            raise StoreBehind(f"read model at position {position}, store's last event {store}")

    def _apply(self, notifications: Sequence[Notification], after: int | None) -> int | None:
        if not notifications:
            return after
        name, mapper = self.service.name, self.service.mapper
        events = [(mapper.to_domain_event(n), Tracking(name, n.id)) for n in notifications]
        started = time.perf_counter()
        position = self.view.apply(events, after)
        metrics.PROJECTION_APPLY_SECONDS.observe(time.perf_counter() - started)
        self.applied = position
        return position

    def _watch(self, subscription: Any, stop: threading.Event, done: threading.Event) -> None:
        """Stop the subscription on ``stop``, or when the position vanishes while idle."""
        next_check = time.monotonic() + self.ahead_check_seconds
        try:
            while not done.wait(self.watchdog_seconds):
                if stop.is_set():
                    break
                believed, position = self._believed, self.view.position()
                if believed is not None and (position is None or position < believed):
                    self._lost = True  # flushed, or an AOF that lost its last writes
                    break
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.ahead_check_seconds
                    store = self.service.recorder.max_notification_id() or 0
                    if position is not None and position > store:
                        self._ahead = True
                        break
        except TRANSIENT:
            log.warning("slot projector: Redis unreachable; restarting the subscription")
        subscription.stop()


def _next_page(subscription: Any) -> list[Notification]:
    """The next notification and every one already buffered behind it (one page).

    The library's LISTEN/NOTIFY subscription selects pages of up to 500
    notifications and yields them one by one; taking the rest of the page at
    once lets the view apply it in one pipelined round trip under load, while
    a lone event still goes out at once. (Relies on the buffering of
    ``eventsourcing.persistence.ListenNotifySubscription`` in 9.5.x.)
    """
    try:
        first = next(subscription)
    except StopIteration:
        return []
    buffered = subscription._notifications[subscription._notifications_index :]
    subscription._notifications_index += len(buffered)
    return [first, *buffered]


def run_projector(settings: Settings, stop: threading.Event) -> None:
    """Run the projector in this thread until ``stop`` is set."""
    projector = Projector(settings)
    try:
        projector.run(stop)
    finally:
        projector.close()
