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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
        try:
            if self._conn is None:  # (re)connect, then return: events may have been missed
                conn = await psycopg.AsyncConnection.connect(**self._info, autocommit=True)
                self._conn = conn
                listen = sql.SQL("LISTEN {}").format(sql.Identifier(self._channel))
                await asyncio.wait_for(conn.execute(listen), self._deadline)
                return None
            heard: list[str] = []
            async for notify in self._conn.notifies(timeout=timeout, stop_after=1):
                heard.append(notify.payload)
            if not heard:
                return None  # the timeout
            async for notify in self._conn.notifies(timeout=0):  # drain the backlog
                heard.append(notify.payload)
            return self._highest(heard)
        except (psycopg.Error, TimeoutError) as e:
            log.warning("LISTEN connection failed (%s); falling back to timeout", type(e).__name__)
            await self.close()
            await asyncio.sleep(min(timeout, 1.0))
            return None

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
