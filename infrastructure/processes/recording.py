"""A follower's position, recorded in the background: off the path of the next page.

The outbox records how far it has published (an fsync'd PostgreSQL commit, a few
milliseconds) after every page. Awaiting that write before reading the next page
put it on the path of every event; ``PositionWriter`` writes it in a task of its
own instead, one write at a time, always the highest position asked for (asks
that arrive during a write are coalesced into the next one).

``settle()`` waits until everything asked for is written and raises the error of
a write that failed. The writer also counts the events acknowledged and not yet
recorded (``acked``, ``unrecorded``): the outbox asks for a write every
``record_every`` events or ``record_interval`` seconds rather than after every
page, and settles before it sends a page that would take that count past one
page, so what a crash republishes stays bounded by one page, as before.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Iterable

__all__ = ["PositionWriter"]


class PositionWriter:
    def __init__(
        self,
        write: Callable[[int], None],
        *,
        on_recorded: Callable[[int], None],
        on_failed: Callable[[], None] = lambda: None,
    ) -> None:
        self._write = write  # blocking: runs in a worker thread
        self._on_recorded = on_recorded
        self._on_failed = on_failed  # a write failed (``settle`` will raise its error)
        self._wanted = 0
        self.recorded = 0
        self._task: asyncio.Task[None] | None = None
        self._acked: list[int] = []  # acknowledged ids not known to be recorded, ascending

    def reset(self, position: int) -> None:
        """The position as read back from the store (after ``settle``): asks go on from it."""
        self._wanted = self.recorded = position
        self._acked = []

    def acked(self, ids: Iterable[int]) -> None:
        """These events (in notification order, after every earlier one) are acknowledged."""
        self._acked.extend(ids)

    @property
    def highest_acked(self) -> int:
        return self._acked[-1] if self._acked else self._wanted

    def unrecorded(self) -> int:
        """Acknowledged events whose position is not written yet (asked or not)."""
        del self._acked[: bisect.bisect_right(self._acked, self.recorded)]
        return len(self._acked)

    def unasked(self) -> int:
        """Acknowledged events no write has been asked for yet."""
        return len(self._acked) - bisect.bisect_right(self._acked, self._wanted)

    @property
    def failed(self) -> bool:
        """A write failed (``settle`` raises its error)."""
        task = self._task
        return (
            task is not None
            and task.done()
            and not task.cancelled()
            and task.exception() is not None
        )

    def ask_acked(self) -> None:
        """Record every acknowledged event's position soon."""
        self.ask(self.highest_acked)

    def ask(self, position: int) -> None:
        """Record ``position`` soon (no wait; a lower or equal one than asked before is
        already covered)."""
        if position <= self._wanted:
            return
        self._wanted = position
        if self._task is None or (self._task.done() and not self.failed):
            self._task = asyncio.create_task(self._drain(), name="record-position")

    async def settle(self) -> None:
        """Wait for every asked position to be written; raise a failed write's error
        (the positions it did not write are asked again by whoever retries)."""
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await task
        except BaseException:
            self._wanted = self.recorded  # not written: a retry may ask again
            raise

    async def _drain(self) -> None:
        while self._wanted > self.recorded:
            target = self._wanted
            try:
                await asyncio.to_thread(self._write, target)
            except BaseException:
                self._on_failed()
                raise
            self.recorded = target
            self._on_recorded(target)
