"""PostgreSQL LISTEN/NOTIFY: wake a follower when new events are committed.

The recorder NOTIFYs the events table's channel (``batchservice_events``) inside
every append transaction, so the notification arrives at commit. Its payload
says which events: ``"<schema>:<last notification id>"``
(``infrastructure/postgres/recorder.py``). The channel is database-wide (not
per schema): ``wait`` returns the highest id announced for this listener's
schema, so a follower that has already read that far (it read the append's
events with an earlier page) or that was woken for another schema reads
nothing. A payload it cannot parse (an older release's empty NOTIFY) says
nothing: ``wait`` then returns None, as on a timeout, and the caller reads.

The followers of a process share one such connection (``SharedListener``):
each waits on a ``Subscription`` of it, as it would on a ``Listener`` of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from infrastructure.postgres.store import conninfo
from infrastructure.postgres.timeouts import libpq_bounds
from infrastructure.settings import Settings

log = logging.getLogger(__name__)


class Listener:
    """LISTEN on the events table's channel; ``wait`` returns on a NOTIFY or timeout.

    ``wait`` returns the highest notification id announced for this schema since
    the last ``wait`` (0: only other schemas' appends), or None when it cannot
    say (a timeout, a reconnection, an unparsable payload): then read.

    The first ``wait`` (and the first after a lost connection) only connects and
    LISTENs, then returns None at once: the caller reads again, so an event
    committed before the LISTEN took effect is never waited for.
    """

    def __init__(self, settings: Settings, channel: str) -> None:
        self._info = {**conninfo(settings), **libpq_bounds(settings)}
        self._deadline = settings.database_call_deadline_seconds
        self._channel = channel
        self._schema = settings.database_schema
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def wait(self, timeout: float) -> int | None:
        heard, highest = await self.heard(timeout)
        return highest if heard else None

    async def heard(self, timeout: float) -> tuple[bool, int | None]:
        """``wait``, telling a timeout (False, None) from a wake-up that cannot say which
        ids (True, None: (re)connected, an unparsable payload)."""
        try:
            if self._conn is None:  # (re)connect, then return: events may have been missed
                conn = await psycopg.AsyncConnection.connect(**self._info, autocommit=True)
                self._conn = conn
                listen = sql.SQL("LISTEN {}").format(sql.Identifier(self._channel))
                await asyncio.wait_for(conn.execute(listen), self._deadline)
                return True, None
            heard: list[str] = []
            async for notify in self._conn.notifies(timeout=timeout, stop_after=1):
                heard.append(notify.payload)
            if not heard:
                return False, None  # the timeout
            async for notify in self._conn.notifies(timeout=0):  # drain the backlog
                heard.append(notify.payload)
            return True, self._highest(heard)
        except (psycopg.Error, TimeoutError) as e:
            log.warning("LISTEN connection failed (%s); falling back to timeout", type(e).__name__)
            await self.close()
            await asyncio.sleep(min(timeout, 1.0))
            return True, None

    def _highest(self, payloads: list[str]) -> int | None:
        highest = 0
        for payload in payloads:
            schema, _, last = payload.rpartition(":")
            if not schema or not last.isdigit():
                return None  # an append that did not say what it stored
            if schema == self._schema:
                highest = max(highest, int(last))
        return highest

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


class SharedListener:
    """One LISTEN connection for all the followers of a process, instead of one each.

    Every NOTIFY used to reach the process once per follower (three connections in
    ``batchctl run``, each woken, each parsing it). Now one reader task per event
    loop holds the connection and hands what it hears to every ``Subscription``
    (``subscribe()``), which a follower waits on as it waited on its own
    ``Listener``. After each (re)connection the reader tells every subscription
    "read" (None), so an event committed before the LISTEN took effect is never
    waited for. The connection closes when the last subscription of its loop does.
    """

    IDLE_SECONDS = 1.0  # how often the reader looks whether anyone still subscribes

    def __init__(self, connect: Callable[[], Listener]) -> None:
        self._connect = connect
        self._readers: dict[asyncio.AbstractEventLoop, _Reader] = {}

    def subscribe(self) -> Subscription:
        """A new subscription (built anywhere; it joins a reader on its first wait)."""
        return Subscription(self)

    def _join(self, subscription: Subscription) -> _Reader:
        loop = asyncio.get_running_loop()
        reader = self._readers.get(loop)
        if reader is None or reader.finished:
            reader = self._readers[loop] = _Reader(self._connect, self.IDLE_SECONDS)
            for stale in [lp for lp, r in self._readers.items() if r.finished or lp.is_closed()]:
                del self._readers[stale]
        reader.add(subscription)
        subscription.ring(None)  # read once joined: the reader may only now be listening
        return reader


class _Reader:
    """The connection of one event loop, fanned out to its subscriptions."""

    def __init__(self, connect: Callable[[], Listener], idle: float) -> None:
        self._listener = connect()
        self._idle = idle
        self._subscriptions: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self.finished = False

    def add(self, subscription: Subscription) -> None:
        self._subscriptions.add(subscription)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._read())

    async def remove(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        if not self._subscriptions and self._task is not None:
            self.finished = True
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def recycle(self) -> None:
        """Close the connection (the stall watchdog's lever); the reader reconnects."""
        await self._listener.close()

    async def _read(self) -> None:
        try:
            while self._subscriptions:
                heard, highest = await self._listener.heard(self._idle)
                if heard:
                    for subscription in list(self._subscriptions):
                        subscription.ring(highest)
        finally:
            self.finished = True
            for subscription in list(self._subscriptions):
                subscription.ring(None)  # (ended by an error: they join a new reader)
            await self._listener.close()


class Subscription:
    """A follower's share of a ``SharedListener``: ``wait`` as ``Listener.wait``."""

    def __init__(self, shared: SharedListener) -> None:
        self._shared = shared
        self._reader: _Reader | None = None
        self._rung = asyncio.Event()
        self._highest = 0  # the highest id announced since the last wait
        self._unknown = False  # a wake-up that could not say which ids

    def ring(self, highest: int | None) -> None:
        """Announce ``highest`` (None: read, whatever the ids)."""
        if highest is None:
            self._unknown = True
        else:
            self._highest = max(self._highest, highest)
        self._rung.set()

    async def wait(self, timeout: float) -> int | None:
        """The highest id announced for this schema since the last ``wait`` (0: only
        other schemas'), or None: a timeout, or read anyway."""
        if self._reader is None or self._reader.finished:
            self._reader = self._shared._join(self)
        if not self._rung.is_set():
            try:
                async with asyncio.timeout(timeout):
                    await self._rung.wait()
            except TimeoutError:
                return None
        highest, unknown = self._highest, self._unknown
        self._highest, self._unknown = 0, False
        self._rung.clear()
        return None if unknown else highest

    async def close(self) -> None:
        """Leave the reader (the last one out closes the connection); a later ``wait``
        joins (or starts) a reader again."""
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.remove(self)

    async def recycle(self) -> None:
        """Reconnect the shared connection (a silent server: the stall watchdog)."""
        if self._reader is not None:
            await self._reader.recycle()
