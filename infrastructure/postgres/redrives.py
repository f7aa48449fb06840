"""The audit trail of ``batchctl dlq redrive``: the table ``dlq_redrives``.

It lives in the service's schema (``DATABASE_SCHEMA``). A dead letter is
*claimed* here before it is sent (a unique key on dlq topic, partition, offset
and attempt), so the same dead letter is never redriven twice, not even by two
operators at once, unless ``--force`` asks for a further attempt; the claim is
completed with the produced partition and offset once the broker acknowledged
the record, and withdrawn if the send fails. The Kafka side is in
``infrastructure/kafka/dlq_admin.py``.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg import sql

from infrastructure.postgres.store import OwnConnection, require_store
from infrastructure.settings import Settings

if TYPE_CHECKING:
    from infrastructure.kafka.dlq_admin import Letter

TABLE = "dlq_redrives"


@dataclass(frozen=True)
class Redrive:
    """One row of ``dlq_redrives``."""

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    attempt: int
    target_topic: str
    target_partition: int | None
    target_offset: int | None
    claimed_at: datetime
    sent_at: datetime | None
    operator: str
    forced: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "target_topic": self.target_topic,
            "target_partition": self.target_partition,
            "target_offset": self.target_offset,
            "claimed_at": self.claimed_at.isoformat(),
            "sent_at": self.sent_at.isoformat() if self.sent_at else None,
            "operator": self.operator,
            "forced": self.forced,
        }


_COLUMNS = (
    "dlq_topic, dlq_partition, dlq_offset, attempt, target_topic, target_partition, "
    "target_offset, claimed_at, sent_at, operator, forced"
)


class RedriveLog(OwnConnection):
    """The ``dlq_redrives`` table: which dead letters were sent back, when, by whom, where."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.table = sql.Identifier(settings.database_schema, TABLE)

    def exists(self) -> bool:
        name = f"{self.settings.database_schema}.{TABLE}"
        row = self.conn.execute("SELECT to_regclass(%s)", [name]).fetchone()
        return bool(row and row[0])

    def create(self) -> None:
        """Create the table if missing (serialised by an advisory lock), in a schema that
        must exist: a typo in DATABASE_SCHEMA is refused (``StoreMissing``), not created."""
        require_store(self.settings)
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('batchslot.dlq_redrives'))")
            self.conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} ("
                    " dlq_topic text NOT NULL, dlq_partition integer NOT NULL,"
                    " dlq_offset bigint NOT NULL, attempt integer NOT NULL,"
                    " reason text NOT NULL, batch_id text,"
                    " source_topic text, source_partition integer, source_offset bigint,"
                    " target_topic text NOT NULL, target_partition integer,"
                    " target_offset bigint,"
                    " claimed_at timestamptz NOT NULL DEFAULT now(), sent_at timestamptz,"
                    " operator text NOT NULL, forced boolean NOT NULL,"
                    " PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset, attempt))"
                ).format(self.table)
            )

    def history(self, letters: Iterable[Letter]) -> dict[tuple[int, int], list[Redrive]]:
        """Earlier redrives of these letters (by partition and offset), oldest first."""
        wanted = list(letters)
        if not wanted or not self.exists():
            return {}
        query = sql.SQL(
            "SELECT {} FROM {} WHERE dlq_topic = %s AND (dlq_partition, dlq_offset)"
            " IN (SELECT * FROM unnest(%s::integer[], %s::bigint[]))"
            " ORDER BY dlq_partition, dlq_offset, attempt"
        ).format(sql.SQL(_COLUMNS), self.table)
        rows = self.conn.execute(
            query,
            [wanted[0].topic, [w.partition for w in wanted], [w.offset for w in wanted]],
        ).fetchall()
        found: dict[tuple[int, int], list[Redrive]] = {}
        for row in rows:
            found.setdefault((row[1], row[2]), []).append(Redrive(*row))
        return found

    def claim(self, letter: Letter, target_topic: str, force: bool) -> int | None:
        """Record the intent to redrive ``letter``; the attempt number, or None when it
        was already redriven (or claimed) and ``force`` is not given."""
        attempt: sql.Composable
        if force:
            attempt = sql.SQL(
                "(SELECT coalesce(max(attempt), 0) + 1 FROM {} "
                "WHERE dlq_topic = %(t)s AND dlq_partition = %(p)s AND dlq_offset = %(o)s)"
            ).format(self.table)
        else:
            attempt = sql.SQL("1")
        query = sql.SQL(
            "INSERT INTO {} (dlq_topic, dlq_partition, dlq_offset, attempt, reason, batch_id,"
            " source_topic, source_partition, source_offset, target_topic, operator, forced)"
            " VALUES (%(t)s, %(p)s, %(o)s, {}, %(reason)s, %(batch)s, %(st)s, %(sp)s, %(so)s,"
            " %(target)s, %(operator)s, %(forced)s)"
            " ON CONFLICT DO NOTHING RETURNING attempt"
        ).format(self.table, attempt)
        row = self.conn.execute(
            query,
            {
                "t": letter.topic,
                "p": letter.partition,
                "o": letter.offset,
                "reason": letter.reason,
                "batch": letter.batch_id,
                "st": letter.source_topic,
                "sp": letter.source_partition,
                "so": letter.source_offset,
                "target": target_topic,
                "operator": _operator(),
                "forced": force,
            },
        ).fetchone()
        return int(row[0]) if row else None

    def complete(self, letter: Letter, attempt: int, partition: int, offset: int) -> None:
        self.conn.execute(
            sql.SQL(
                "UPDATE {} SET target_partition = %s, target_offset = %s, sent_at = now() "
                "WHERE dlq_topic = %s AND dlq_partition = %s AND dlq_offset = %s AND attempt = %s"
            ).format(self.table),
            [partition, offset, letter.topic, letter.partition, letter.offset, attempt],
        )

    def withdraw(self, letter: Letter, attempt: int) -> None:
        self.conn.execute(
            sql.SQL(
                "DELETE FROM {} WHERE dlq_topic = %s AND dlq_partition = %s "
                "AND dlq_offset = %s AND attempt = %s AND sent_at IS NULL"
            ).format(self.table),
            [letter.topic, letter.partition, letter.offset, attempt],
        )


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"
