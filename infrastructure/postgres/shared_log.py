"""One read and one decode of each page of the notification log, shared by the followers.

The projector, the outbox and the due-batch index each follow the whole log. In
one process (``batchctl run``, or a process leading several followers) they
used to read and decode every event three times. ``SharedLog`` keeps the last
notifications read (up to ``CAPACITY`` of them, and ``CAPACITY_BYTES`` of their
stored state), with their decoded events, so the follower that reads a page
first pays for it and the others take it from memory. The window is that large
where this process's own appends feed it, so a follower that trails while the
worker drains a backlog (the outbox, the slowest of the three) still finds its
pages in it; at 4,000 it fell out and read and decoded most of a drain from the
store again (12% of the process's CPU in a drain). Fed by reads alone (a
process of followers only) it keeps ``READ_CAPACITY``; and a process whose
followers do not read here (a worker whose followers lead elsewhere) keeps
none of its appends.

Why a cached page is the page a fresh read would return: notification ids
commit in id order (an append takes the events table's EXCLUSIVE lock before
it draws its ids and holds it to its commit), so a read of the ids after
``after`` that returns ids up to ``last`` saw every id in ``(after, last]``
that will ever exist; ids in a rolled-back append are never used again. The
cache holds one such complete window ``(low, high]``: reads that overlap or
touch it extend it; a read that does not (a follower replaying from 0) is
served from the store and kept only if it is ahead of the window (followers
converge on the head of the log). It is trimmed from the low end to
``capacity`` notifications and ``capacity_bytes`` of stored state.

A read that starts inside the window takes what the window has after it and
reads only the rest from the store, so it returns exactly what
``select_notifications(after, limit)`` would, in one store round trip at most.
Followers that need the same read at once (woken by one NOTIFY) make it once:
the others wait for it and take the page from the window.
A store restored from an older backup breaks the premise (ids are drawn
again): a follower that finds the store behind what it has read calls
``forget()`` (the projector and the outbox check for it), and a store read
that contradicts the window (another event under an id it holds) empties it.
Decoded events are shared too (the library's events are frozen dataclasses;
no follower changes them). Thread-safe: followers read from worker threads.

This process's own appends are neither read back nor decoded: the recorder
hands the window the notifications of every append it commits, with the
domain events the service stored (``appended``), which are the events a
decode of those rows returns (equal field by field, checked in
``tests/integration/test_shared_log.py``). An append's NOTIFY is sent at its
commit, a moment before the recorder hands its rows over: a read told of ids
this process is appending waits for them (``OWN_APPEND_WAIT`` at most)
instead of reading them back. A read that the window can answer is answered
in the caller's thread (``cached``): a follower on the event loop hops to a
worker thread only when the store must be asked.
"""

from __future__ import annotations

import bisect
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from eventsourcing.persistence import ApplicationRecorder, Mapper, Notification

__all__ = ["SharedLog", "shared_log"]

CAPACITY = 20_000  # notifications kept (about 20 MB with their decoded events)
CAPACITY_BYTES = 32 * 1024 * 1024  # and at most this much stored state (large completions)
OWN_APPEND_WAIT = 0.05  # seconds a read waits for the rows of an own append it was told of
READ_CAPACITY = 4000  # notifications kept where no append of this process feeds the window
UNREAD_SECONDS = 5.0  # appends are kept only while a follower of this process reads


class SharedLog:
    def __init__(
        self,
        recorder: ApplicationRecorder,
        mapper: Mapper[Any],
        capacity: int = CAPACITY,
        capacity_bytes: int = CAPACITY_BYTES,
    ) -> None:
        self.recorder, self.mapper, self.capacity = recorder, mapper, capacity
        self.capacity_bytes = capacity_bytes
        self._bytes = 0  # stored state held
        self._lock = threading.Condition()  # the window's state (notified on each append)
        self._inflight: dict[int, threading.Event] = {}  # store reads under way, by start
        self._low = self._high = 0  # the window (low, high]; empty while low == high
        self._ids: list[int] = []  # ascending, all in (low, high]
        self._rows: dict[int, Notification] = {}
        self._events: dict[int, Any] = {}  # decoded, by notification id
        self.store_reads = 0  # reads that went to the store (for tests and metrics)
        self.reads = 0
        self.pushed = 0  # notifications kept from this process's own appends
        self._appending = 0  # this process's appends under way (committed, not yet kept)
        self._read_at = float("-inf")  # when a follower of this process last read
        watch = getattr(recorder, "watch", None)
        if watch is not None:  # (the project's recorder; the library's has none)
            watch(self)

    def appending(self) -> None:
        """An append of this process begins (its ``appended`` follows, whatever happens)."""
        with self._lock:
            self._appending += 1

    def appended(self, notifications: Sequence[Notification], events: Sequence[Any] | None) -> None:
        """The notifications of an append this process has just committed (empty: it
        failed), and the domain events it stored (None: not given): kept if they
        continue the window (or start it), so the followers of this process take them
        from memory instead of reading them back and decoding them. One append's ids
        are consecutive (drawn under the table lock), so ``(first - 1, last]`` holds
        exactly them; an append that does not continue the window (another process's
        ids before it, not read yet) is left to the store."""
        with self._lock:
            self._appending -= 1
            self._lock.notify_all()
            if not notifications or time.monotonic() - self._read_at > UNREAD_SECONDS:
                return  # (nobody here reads the log: a worker whose followers run elsewhere)
            first = notifications[0].id  # (ascending, as the append returns them)
            if notifications[-1].id - first != len(notifications) - 1:
                return  # not one run of consecutive ids
            if self._low == self._high or first - 1 == self._high:
                self._keep(first - 1, list(notifications))
                self.pushed += len(notifications)
                if events is not None:
                    for n, event in zip(notifications, events, strict=True):
                        if n.id in self._rows:  # (not trimmed at once)
                            self._events[n.id] = event

    # ------------------------------------------------------------------ reading

    def cached(
        self, after: int | None, limit: int, announced: int | None = None
    ) -> Sequence[Notification] | None:
        """What ``read`` returns, if the window can say it without the store (None: it
        cannot). Never blocks on I/O: the event loop may call it."""
        with self._lock:
            page = self._answer(after or 0, limit, announced)
            if page is not None:
                self.reads += 1
                self._read_at = time.monotonic()
            return page

    def _answer(self, after: int, limit: int, announced: int | None) -> list[Notification] | None:
        """The window's answer to a read (the lock held), or None: ask the store."""
        cached = self._after(after, limit)
        if cached is not None and (
            len(cached) == limit or (announced is not None and self._high >= announced)
        ):
            return cached
        return None

    def read(
        self, after: int | None, limit: int, announced: int | None = None
    ) -> Sequence[Notification]:
        """The notifications after ``after`` (None: from the start), at most ``limit``,
        in id order: what ``select_notifications(after, limit)`` returns.

        ``announced``: the highest id the caller has been told of (the NOTIFY that woke
        it; None: unknown). A window that reaches it answers a short page from memory:
        an append after it has not been announced yet, and its NOTIFY wakes the caller
        again."""
        after = after or 0
        with self._lock:
            self.reads += 1
            self._read_at = time.monotonic()
            if announced is not None and announced > self._high and self._appending:
                # The NOTIFY of this process's own append came before the append handed
                # its rows over (it is sent at commit): wait for them, briefly.
                self._lock.wait_for(
                    lambda: self._high >= announced or not self._appending, OWN_APPEND_WAIT
                )
        while True:
            with self._lock:
                answer = self._answer(after, limit, announced)
                if answer is not None:
                    return answer
                cached = self._after(after, limit)
                # The window has everything up to its high end: read only what follows.
                start = self._high if cached is not None else after
                running = self._inflight.get(start)
                if running is None:
                    mine = self._inflight[start] = threading.Event()
            if running is None:
                break
            running.wait()  # another follower reads the same: take its page, then look again
        try:
            fresh = list(
                self.recorder.select_notifications(
                    start=start, limit=limit - len(cached or ()), inclusive_of_start=False
                )
            )
            with self._lock:
                self.store_reads += 1
                self._keep(start, fresh)
        finally:
            with self._lock:
                del self._inflight[start]
            mine.set()
        return [*(cached or ()), *fresh]

    def events(self, notifications: Sequence[Notification]) -> list[Any]:
        """The domain events of ``notifications`` (each decoded once while it is kept)."""
        with self._lock:
            known = [self._events.get(n.id) for n in notifications]
        decoded: dict[int, Any] = {}
        result = []
        for n, event in zip(notifications, known, strict=True):
            if event is None:
                event = decoded[n.id] = self.mapper.to_domain_event(n)
            result.append(event)
        if decoded:
            with self._lock:
                for nid, event in decoded.items():
                    if nid in self._rows:
                        self._events[nid] = event
        return result

    def forget(self) -> None:
        """Drop the window (the store was found behind it: restored from a backup)."""
        with self._lock:
            self._clear()

    def check_head(self, read_head: Callable[[], int]) -> tuple[int, bool]:
        """The store's last id (``read_head()``), and whether the window was beyond it
        (the store restored from an older backup; the window is then dropped).

        The window's end is taken *before* the store is asked: appends and other
        followers' reads move both on meanwhile, and a window end taken after the
        store's answer could be beyond it without anything being wrong."""
        with self._lock:
            seen = self._high
        store_head = read_head()
        if seen <= store_head:
            return store_head, False
        with self._lock:
            self._clear()
        return store_head, True

    # ------------------------------------------------------------------ window

    def _after(self, after: int, limit: int) -> list[Notification] | None:
        """The window's notifications after ``after`` (None: ``after`` is outside it)."""
        if not (self._low <= after < self._high):
            return None
        i = bisect.bisect_right(self._ids, after)
        return [self._rows[nid] for nid in self._ids[i : i + limit]]

    def _keep(self, after: int, page: list[Notification]) -> None:
        """Add a complete read of ``(after, page[-1].id]`` to the window."""
        if not page:
            return
        if any(
            (held := self._rows.get(n.id)) is not None
            and (held.originator_id, held.originator_version)
            != (n.originator_id, n.originator_version)
            for n in page
        ):
            self._clear()  # the store drew these ids again: it was restored
        last = page[-1].id
        touches = self._low < self._high and after <= self._high and last >= self._low
        if not touches:
            if self._low < self._high and last <= self._high:
                return  # behind the window (a replay): not kept
            self._clear()
            self._low = after
        else:
            self._low = min(self._low, after)
        for n in page:
            if n.id not in self._rows:
                self._rows[n.id] = n
                self._bytes += len(n.state)
                if self._ids and n.id < self._ids[-1]:
                    bisect.insort(self._ids, n.id)
                else:
                    self._ids.append(n.id)
        self._high = max(self._high, last)
        self._trim()

    def _trim(self) -> None:
        # A window only reads fill (no append of this process feeds it) serves followers
        # that read the same pages at about the same time: a few pages are enough.
        capacity = self.capacity if self.pushed else min(self.capacity, READ_CAPACITY)
        over_bytes = self._bytes > self.capacity_bytes
        if len(self._ids) <= capacity + capacity // 4 and not over_bytes:
            return  # (trimmed a quarter at a time: not a list copy per page)
        excess = max(0, len(self._ids) - capacity)
        if over_bytes:  # the oldest, until a quarter under the byte bound
            target, freed = self._bytes - self.capacity_bytes * 3 // 4, 0
            while excess < len(self._ids) - 1 and freed < target:
                freed += len(self._rows[self._ids[excess]].state)
                excess += 1
        if not excess:
            return
        dropped, self._ids = self._ids[:excess], self._ids[excess:]
        for nid in dropped:
            self._bytes -= len(self._rows.pop(nid).state)
            self._events.pop(nid, None)
        self._low = dropped[-1]

    def _clear(self) -> None:
        self._ids, self._rows, self._events = [], {}, {}
        self._low = self._high = self._bytes = 0


_LOGS: weakref.WeakKeyDictionary[Any, SharedLog] = weakref.WeakKeyDictionary()
_LOGS_LOCK = threading.Lock()


def shared_log(app: Any) -> SharedLog:
    """The shared log of an event store application (one per application object: the
    followers built on one process's service share it)."""
    with _LOGS_LOCK:
        log = _LOGS.get(app)
        if log is None:
            log = _LOGS[app] = SharedLog(app.recorder, app.mapper)
        return log
