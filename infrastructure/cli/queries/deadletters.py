"""The dead letters as ``batchctl dlq`` shows them: listed, one in full, redriven.

The reading is in ``infrastructure/kafka/dlq_admin.py``, the audit trail in
``infrastructure/postgres/redrives.py``; this module selects letters, joins
their redrive history and shapes the documents ``--json`` prints.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from infrastructure.cli.common import ProgressFn, fail
from infrastructure.cli.durations import parse_since
from infrastructure.kafka.dlq_admin import Letter, Outcome, Scan, read_letters
from infrastructure.kafka.dlq_admin import redrive as redrive_letters
from infrastructure.postgres.redrives import Redrive, RedriveLog
from infrastructure.settings import Settings

STATUSES = ("sent", "would_send", "already_redriven", "unknown_source_topic")


@dataclass(frozen=True)
class Selection:
    reasons: frozenset[str]
    since: datetime | None
    batch: str | None

    @classmethod
    def of(cls, reasons: list[str] | None, since: str | None, batch: str | None) -> Selection:
        moment = parse_since(since, "--since", datetime.now(UTC)) if since else None
        return cls(frozenset(reasons or ()), moment, batch)

    def __call__(self, letter: Letter) -> bool:
        if self.reasons and letter.reason not in self.reasons:
            return False
        if self.since is not None and (letter.timestamp is None or letter.timestamp < self.since):
            return False
        return self.batch is None or letter.batch_id == self.batch


def quiet_kafka() -> None:
    """aiokafka's own log lines (``Unable connect to ...``) are not for an operator's
    terminal: the one-line error says what failed."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def _read(
    s: Settings,
    keep: Callable[[Letter], bool],
    *,
    partition: int | None = None,
    from_offset: int | None = None,
    to_offset: int | None = None,
    missing_ok: bool = False,
) -> tuple[Scan, list[Letter]]:
    scan = Scan(s.topics.dlq, missing_ok=missing_ok)
    quiet_kafka()

    async def collect() -> list[Letter]:
        return [
            letter
            async for letter in read_letters(
                s, scan, partition=partition, from_offset=from_offset, to_offset=to_offset
            )
            if keep(letter)
        ]

    return scan, asyncio.run(collect())


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _text(raw: bytes | None) -> str | None:
    return raw.decode("utf-8", "replace") if raw is not None else None


def summary_json(letter: Letter, redrives: list[Redrive]) -> dict[str, Any]:
    envelope = letter.envelope or {}
    return {
        "partition": letter.partition,
        "offset": letter.offset,
        "timestamp": _iso(letter.timestamp),
        "reason": letter.reason,
        "detail": letter.detail,
        "source_topic": letter.source_topic,
        "source_partition": letter.source_partition,
        "source_offset": letter.source_offset,
        "key": _text(letter.key),
        "batch_id": letter.batch_id,
        "event_type": envelope.get("event_type") if isinstance(envelope, dict) else None,
        "correlation_id": envelope.get("correlation_id") if isinstance(envelope, dict) else None,
        "value_bytes": len(letter.value) if letter.value is not None else None,
        "redriven_from": letter.redriven_from,
        "redrives": [r.as_json() for r in redrives],
    }


@dataclass(frozen=True)
class Listing:
    """``dlq list``: the chosen letters' summaries, as read up to the end offsets."""

    scan: Scan
    rows: list[dict[str, Any]]
    letters: list[Letter]  # the rows' letters, without their values

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.scan.topic,
            "end_offsets": {str(p): o for p, o in self.scan.end_offsets.items()},
            "count": len(self.rows),
            "dead_letters": self.rows,
        }


def list_letters(s: Settings, selection: Selection) -> Listing:
    """Every letter the selection keeps, oldest first per partition (redrives not yet
    joined: see ``with_redrives``)."""
    rows: list[dict[str, Any]] = []
    slim: list[Letter] = []  # values are not kept: a DLQ can be large

    def keep(letter: Letter) -> bool:
        if selection(letter):
            rows.append(summary_json(letter, []))
            slim.append(replace(letter, value=None))
        return False

    scan, _ = _read(s, keep, missing_ok=True)
    return Listing(scan, rows, slim)


def with_redrives(s: Settings, listing: Listing) -> Listing:
    """The listing with each letter's redrives from the audit table."""
    with RedriveLog(s) as log:
        history = log.history(listing.letters)
    for row, letter in zip(listing.rows, listing.letters, strict=True):
        row["redrives"] = [r.as_json() for r in history.get((letter.partition, letter.offset), [])]
    return listing


@dataclass(frozen=True)
class Shown:
    """``dlq show``: one letter in full and its earlier redrives."""

    letter: Letter
    history: list[Redrive]
    document: dict[str, Any]


def letter_document(letter: Letter, history: list[Redrive]) -> dict[str, Any]:
    """The summary, then every header, the value (text or base64) and the envelope."""
    document = summary_json(letter, history)
    document["headers"] = [[k, v.decode("utf-8", "replace")] for k, v in letter.headers]
    try:
        document["value"] = letter.value.decode("utf-8") if letter.value is not None else None
        document["value_base64"] = None
    except UnicodeDecodeError:
        document["value"] = None
        document["value_base64"] = base64.b64encode(letter.value or b"").decode()
    document["envelope"] = letter.envelope
    return document


def show_letter(s: Settings, offset: int, partition: int | None) -> Shown:
    """The letter at OFFSET (in PARTITION, or the one partition that has it)."""
    _, letters = _read(s, lambda _: True, partition=partition, from_offset=offset, to_offset=offset)
    letters = [w for w in letters if w.offset == offset]
    if not letters:
        where = f"partition {partition}" if partition is not None else "any partition"
        fail(f"no dead letter at offset {offset} in {where} of {s.topics.dlq}; see 'dlq list'")
    if len(letters) > 1:
        found = ", ".join(str(w.partition) for w in letters)
        fail(f"offset {offset} is in partitions {found} of {s.topics.dlq}: add --partition")
    [letter] = letters
    with RedriveLog(s) as log:
        history = log.history([letter]).get((letter.partition, letter.offset), [])
    return Shown(letter, history, letter_document(letter, history))


@dataclass(frozen=True)
class Redriven:
    """``dlq redrive``: what happened to each chosen letter, and the counts by status."""

    dry_run: bool
    outcomes: list[Outcome]

    @property
    def counts(self) -> dict[str, int]:
        return {status: sum(o.status == status for o in self.outcomes) for status in STATUSES}

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "selected": len(self.outcomes),
            **self.counts,
            "letters": [o.as_json() for o in self.outcomes],
        }


def redrive(
    s: Settings,
    selection: Selection,
    offsets: tuple[int | None, int | None],
    partition: int | None,
    progress: AbstractContextManager[ProgressFn],
    *,
    dry_run: bool,
    force: bool,
) -> Redriven:
    """Send the chosen letters back (``dry_run``: only say what would be sent)."""
    low, high = offsets
    _, letters = _read(s, selection, partition=partition, from_offset=low, to_offset=high)
    with RedriveLog(s) as log, progress as update:
        outcomes = asyncio.run(
            redrive_letters(s, letters, log, dry_run=dry_run, force=force, progress=update)
        )
    return Redriven(dry_run, outcomes)
