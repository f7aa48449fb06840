"""PostgreSQL LISTEN/NOTIFY: wake a projector when new events are committed.

The library's recorder NOTIFYs the events table's channel (``batchservice_events``)
inside every insert transaction, so the notification arrives at commit. The
channel is database-wide (not per schema): a wake-up may be for another
schema's events, which costs one empty read, never a missed one.
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

    The first ``wait`` (and the first after a lost connection) only connects and
    LISTENs, then returns at once: the caller reads again, so an event committed
    before the LISTEN took effect is never waited for.
    """

    def __init__(self, settings: Settings, channel: str) -> None:
        self._info = {**conninfo(settings), **libpq_bounds(settings)}
        self._deadline = settings.database_call_deadline_seconds
        self._channel = channel
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def wait(self, timeout: float) -> None:
        try:
            if self._conn is None:  # (re)connect, then return: events may have been missed
                conn = await psycopg.AsyncConnection.connect(**self._info, autocommit=True)
                self._conn = conn
                listen = sql.SQL("LISTEN {}").format(sql.Identifier(self._channel))
                await asyncio.wait_for(conn.execute(listen), self._deadline)
                return
            async for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                break
            async for _ in self._conn.notifies(timeout=0):  # drain the backlog
                pass
        except (psycopg.Error, TimeoutError) as e:
            log.warning("LISTEN connection failed (%s); falling back to timeout", type(e).__name__)
            await self.close()
            await asyncio.sleep(min(timeout, 1.0))

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


async def first_of(*aws: Any) -> None:
    """Wait until the first awaitable finishes; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
