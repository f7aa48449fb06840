"""One follower loop over the event store's notification log: catch up, then follow.

Every reader of the log that runs for good (the Redis projector, the outbox,
the due-batch index) is a ``Follower``: it says where it stands
(``read_after``), applies a page of notifications (``handle``), checks what
it must check once caught up (``caught_up``) and says how to go on after a
failure (``failed``). ``follow`` does the rest, the same way for all of them:

- read the page after the follower's position (``page_size`` notifications,
  in notification-id order: ids commit in order, so a page never skips a gap
  that fills later), apply it, and read again at once while pages come full;
  the page comes from the process's ``SharedLog``
  (``infrastructure/postgres/shared_log.py``): followers of one process read
  and decode each page once between them, and a page it holds is taken in
  the event loop, without a thread hop;
- caught up: wait for PostgreSQL NOTIFY on the events table's channel (the
  recorder notifies in every append, with the last id it stored; the
  followers of a process share one LISTEN connection, ``SharedListener`` in
  ``infrastructure/postgres/listen.py``), or ``idle_timeout`` at most, then
  read again; a NOTIFY of ids this loop has
  already read (the page it just read held them) or of another schema's
  appends is waited past without a read, never a missed event;
- a failure goes to the follower, which raises it (the loop ends) or asks
  for a retry, at once or after a capped exponential backoff.

Run under a lease (``processes/leadership.py``), the loop checks the lease
before every page (``FENCE``, set by the runner for the follower's task): a
holder that lost it (a stopped process that woke up) stops before it reads
another page, and ``LeaseLost`` ends the loop instead of being retried.

Only public APIs of the library are used (``select_notifications``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Protocol

from eventsourcing.persistence import Notification

from infrastructure.postgres.lease import LeaseLost
from infrastructure.postgres.listen import Subscription
from infrastructure.postgres.shared_log import SharedLog


class Fence(Protocol):
    """The lease a follower runs under (``processes/leadership.py``)."""

    def fresh(self) -> bool:
        """Confirmed recently enough to be certain it is still held (no round trip)."""
        ...

    def confirm(self) -> None:
        """Ask the server; raise ``LeaseLost`` unless it is still held (blocking)."""
        ...


# The lease of the follower running in this context (None: no lease, as in tests and
# single-role loops run directly). asyncio tasks and asyncio.to_thread copy it.
FENCE: ContextVar[Fence | None] = ContextVar("batchslot_follower_fence", default=None)


def check_fence() -> None:
    """Raise ``LeaseLost`` if this follower runs under a lease it no longer holds
    (blocking: call it from a thread, e.g. right before a position is recorded)."""
    fence = FENCE.get()
    if fence is not None and not fence.fresh():
        fence.confirm()


async def acheck_fence() -> None:
    """``check_fence`` for the event loop (no round trip while the lease is fresh)."""
    fence = FENCE.get()
    if fence is not None and not fence.fresh():
        await asyncio.to_thread(fence.confirm)


class Follower(Protocol):
    async def read_after(self) -> int | None:
        """The notification id to read after (None: from the start); asked before every page."""
        ...

    async def handle(self, page: Sequence[Notification], after: int | None) -> None:
        """Apply a non-empty page read after ``after``."""
        ...

    async def caught_up(self) -> None:
        """Called whenever the follower has caught up (before it waits)."""
        ...

    async def failed(self, error: Exception) -> bool:
        """Decide about a failure: raise to stop; True to retry after the backoff,
        False to retry at once."""
        ...


async def follow(
    follower: Follower,
    log: SharedLog,
    wake: Subscription,
    stop: asyncio.Event,
    *,
    page_size: int,
    idle_timeout: float,
    backoff: tuple[float, float] = (0.1, 5.0),
    nudge: asyncio.Event | None = None,
) -> None:
    """Run ``follower`` until ``stop`` is set (or it raises); closes ``wake`` at the end.
    A wait ends at once when ``nudge`` is set and ``wake`` rung (the follower has
    something to check: whoever sets it rings)."""
    delay = backoff[0]
    announced: int | None = None  # the highest id the last wake-up's NOTIFY named
    # ``stop`` rings the subscription: a wait is one await, not a task per wait.
    stopping = asyncio.ensure_future(_ring_when_set(stop, wake))
    try:
        while not stop.is_set():
            try:
                await acheck_fence()
                after = await follower.read_after()
                page = log.cached(after, page_size, announced)  # (memory: no thread hop)
                if page is None:
                    page = await asyncio.to_thread(log.read, after, page_size, announced)
                # ``announced`` is kept while pages come full: every id up to it is
                # committed (ids commit in order), and any later append is announced to
                # ``wake`` (so the wait after the next short page reads it).
                if page:
                    await follower.handle(page, after)
                if len(page) < page_size:
                    await follower.caught_up()
                    read_to = page[-1].id if page else after or 0
                    announced = await _wait_for_more(read_to, wake, stop, idle_timeout, nudge)
                delay = backoff[0]  # (a whole round, its checks too, went through)
            except LeaseLost:
                raise
            except Exception as error:
                announced = None  # (read the store again)
                if await follower.failed(error):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    delay = min(delay * 2, backoff[1])
    finally:
        stopping.cancel()
        await asyncio.gather(stopping, return_exceptions=True)
        await wake.close()


async def _ring_when_set(event: asyncio.Event, wake: Subscription) -> None:
    await event.wait()
    wake.ring(None)


async def _wait_for_more(
    read_to: int,
    wake: Subscription,
    stop: asyncio.Event,
    timeout: float,
    nudge: asyncio.Event | None = None,
) -> int | None:
    """Wait until an append may hold ids after ``read_to`` (or ``timeout``, or ``stop``,
    or ``nudge``); return the highest id announced (None: not known, read anyway).

    Each wake-up's NOTIFY says the highest id it announces: at most ``read_to`` (the
    last page already held those ids) or 0 (another schema's appends) is waited past.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while not stop.is_set():
        if nudge is not None and nudge.is_set():
            nudge.clear()
            return None
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return None
        heard = await wake.wait(left)
        if heard is None or heard > read_to:
            if nudge is not None:
                nudge.clear()
            return heard
    return None


def run_blocking(main: Callable[[asyncio.Event], Awaitable[None]], stop: threading.Event) -> None:
    """Run ``main(stopping)`` on a new event loop in this thread until it returns;
    setting ``stop`` (from any thread) sets ``stopping`` (no polling of the flag)."""

    async def runner() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()

        def bridge() -> None:
            stop.wait()
            with contextlib.suppress(RuntimeError):  # the loop has already finished
                loop.call_soon_threadsafe(stopping.set)

        threading.Thread(target=bridge, name="stop-bridge", daemon=True).start()
        await main(stopping)

    asyncio.run(runner())
