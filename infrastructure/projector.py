"""The slot-count projector: event store notification log -> Redis slot view.

It catches up in pages (one pipelined round trip per page), then follows the
store live through the library's PostgreSQL LISTEN/NOTIFY subscription. If the
position in Redis disappears (Redis flushed or restarted empty) it notices,
on the next write or within ``watchdog_seconds`` when idle, and replays from 0;
the per-batch version guard makes any replayed event a no-op.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import Notification, Tracking

from application.service import BatchService
from infrastructure.bootstrap import Bootstrap
from infrastructure.rebuild import RebuildSummary, rebuild
from infrastructure.redis_view import PositionLost, RedisSlotView
from infrastructure.settings import Settings
from infrastructure.transient import TRANSIENT
from projections.slot_view import VersionGap

__all__ = ["Projector", "RebuildSummary", "rebuild", "run_projector"]
log = logging.getLogger(__name__)


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
    ) -> None:
        self._owned = (service is None, view is None)
        self.service = service or Bootstrap(settings).batch_service()
        self.view = view or RedisSlotView.from_settings(settings)
        self.page_size, self.watchdog_seconds = page_size, watchdog_seconds
        self.replays = 0  # times the position was lost and the log replayed from 0
        self._stop, self._dead, self._lost = threading.Event(), threading.Event(), False
        self._lock = threading.Lock()
        self._subscription: Any = None
        self._believed: int | None = None  # the position this projector last wrote
        self._streak = 0  # replays from 0 in a row that did not finish catching up
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

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
        from_zero, delay = False, 0.1
        while not stop.is_set():
            try:
                self._run_once(stop, from_zero)
                from_zero, delay = False, 0.1
            except (PositionLost, VersionGap) as lost:
                if self._streak >= 3:  # replays that never got through the catch-up
                    raise
                log.warning("slot view out of step with the store (%s); replaying from 0", lost)
                self.replays, self._streak, from_zero = self.replays + 1, self._streak + 1, True
            except TRANSIENT as error:
                log.warning("slot projector: %s; retrying in %.1fs", type(error).__name__, delay)
                stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def _run_once(self, stop: threading.Event, from_zero: bool) -> None:
        recorder = self.service.recorder
        position = None if from_zero else self.view.position()
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
        if self._lost:
            raise PositionLost("the position disappeared from Redis while idle")

    def _apply(self, notifications: Sequence[Notification], after: int | None) -> int | None:
        if not notifications:
            return after
        name, mapper = self.service.name, self.service.mapper
        events = [(mapper.to_domain_event(n), Tracking(name, n.id)) for n in notifications]
        return self.view.apply(events, after)

    def _watch(self, subscription: Any, stop: threading.Event, done: threading.Event) -> None:
        """Stop the subscription on ``stop``, or when the position vanishes while idle."""
        try:
            while not done.wait(self.watchdog_seconds):
                if stop.is_set():
                    break
                if self._believed is not None and self.view.position() is None:
                    self._lost = True
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
