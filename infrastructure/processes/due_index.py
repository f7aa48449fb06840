"""The due-batch index follower: the notification log -> ``batch_due`` (PostgreSQL).

Runs next to the sweep that reads the index (in every worker, and in
``batchctl run``), on one of those processes at a time (its lease:
``processes/leadership.py``); should two run at once (a stopped ex-holder
that wakes), that is safe: a page and the position move in
one transaction, compare-and-set on the position, so the follower that loses
a race rolls back and reads again (``infrastructure/postgres/due_index.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import IntegrityError, Notification

from infrastructure import metrics
from infrastructure.postgres.due_index import DueIndex
from infrastructure.postgres.listen import Subscription
from infrastructure.postgres.shared_log import shared_log
from infrastructure.processes.follower import follow
from infrastructure.transient import is_transient
from projections.due_index import due_change_of

log = logging.getLogger("batchslot.due_index")

# Nothing waits for the index by the millisecond (the sweep runs every few seconds, and
# deadlines are minutes away), so a caught-up follower reads again after at most this
# pause: under a light load one transaction per pause instead of one per append.
PAUSE_SECONDS = 0.5


class DueIndexFollower:
    """Keeps the due-batch index up to date with the store (a ``Follower``)."""

    def __init__(
        self,
        app: Any,
        index: DueIndex,
        listener: Subscription,
        *,
        page_size: int = 500,
        idle_timeout: float = 5.0,
        pause: float = PAUSE_SECONDS,
    ) -> None:
        self._app = app
        self.index = index
        self._listener = listener
        self.page_size, self.idle_timeout, self.pause = page_size, idle_timeout, pause
        self._stop = asyncio.Event()
        self.conflicts = 0  # pages another follower recorded first
        self.applied: int | None = None  # the last position applied
        # The position this follower last moved the index to (None: read it). A page
        # moves it from there by compare-and-set, so a follower that another moved
        # past is told so (IntegrityError) and reads it again: no read per page.
        self._after: int | None = None

    async def run(self, stop: asyncio.Event) -> None:
        self._after = None  # (a new lease: another instance may have led)
        self._stop = stop
        await follow(
            self,
            shared_log(self._app),
            self._listener,
            stop,
            page_size=self.page_size,
            idle_timeout=self.idle_timeout,
        )

    # ------------------------------------------------------------ Follower

    async def read_after(self) -> int | None:
        if self._after is None:
            self._after = await asyncio.to_thread(self.index.position)
        return self._after

    async def handle(self, page: Sequence[Notification], after: int | None) -> None:
        await asyncio.to_thread(self.apply, page, after or 0)

    def apply(self, page: Sequence[Notification], after: int) -> None:
        changes = [
            (str(event.batch_id), due_change_of(event))
            for event in shared_log(self._app).events(page)
        ]
        self.index.apply(changes, after, page[-1].id)
        self.applied = self._after = page[-1].id

    async def caught_up(self) -> None:
        """Caught up: let the next events gather for ``pause`` seconds (one page and one
        transaction for all of them, not one per append)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), self.pause)

    async def failed(self, error: Exception) -> bool:
        self._after = None  # read the position again
        if isinstance(error, IntegrityError):
            self.conflicts += 1  # another follower recorded this page: read again
            return False
        if is_transient(error):
            metrics.TRANSIENT.labels("due_index").inc()
            log.warning("due index follower: %s; retrying", repr(error)[:200])
            return True
        raise error
