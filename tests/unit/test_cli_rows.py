"""Query data to table rows, for the CLI's tables (pure: no servers, no printing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from infrastructure.cli import deadletter_tables as tables
from infrastructure.cli.batches import COLUMNS as BATCH_COLUMNS
from infrastructure.cli.batches import batch_row
from infrastructure.cli.output import Markup
from infrastructure.cli.pending import COLUMNS as PENDING_COLUMNS
from infrastructure.cli.pending import pending_row
from infrastructure.cli.queries.batches import entry
from infrastructure.cli.queries.deadletters import (
    Redriven,
    Shown,
    letter_document,
    summary_json,
)
from infrastructure.cli.queries.pending import Held
from infrastructure.kafka.dlq_admin import Letter, Outcome
from infrastructure.postgres.redrives import Redrive

AT = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
ENVELOPE = b'{"event_type": "BatchEssaysRegistered", "correlation_id": "c-1", "data": {}}'


def letter(offset: int = 7, value: bytes | None = ENVELOPE, batch: str = "b-1") -> Letter:
    return Letter(
        topic="dlq",
        partition=1,
        offset=offset,
        timestamp=AT,
        key=batch.encode(),
        value=value,
        headers=(
            ("dlq.reason", b"PROCESSING_ERROR"),
            ("dlq.detail", b"x" * 100),
            ("dlq.source.topic", b"inbound"),
            ("dlq.source.partition", b"0"),
            ("dlq.source.offset", b"41"),
        ),
    )


def redrive(attempt: int, partition: int | None, offset: int | None) -> Redrive:
    return Redrive("dlq", 1, 7, attempt, "inbound", partition, offset, AT, None, "ops", False)


def test_a_listed_letter_is_one_row_in_the_columns_order() -> None:
    row = summary_json(letter(), [redrive(1, 0, 50), redrive(2, 2, 9)])
    cells = tables.list_row(row)
    assert len(cells) == len(tables.LIST_COLUMNS)
    assert dict(zip([c.header for c in tables.LIST_COLUMNS], cells, strict=True)) == {
        "part": "1",
        "offset": "7",
        "time": "2026-01-02T03:04:05",
        "reason": "PROCESSING_ERROR",
        "source": "inbound/0/41",
        "batch": row["batch_id"] or "",
        "redriven": "#1 → 0/50, #2 → 2/9",
        "detail": "x" * 80,
    }


def test_a_letter_without_time_or_redrives_has_empty_cells() -> None:
    row = {**summary_json(letter(), []), "timestamp": None, "batch_id": None}
    cells = tables.list_row(row)
    assert (cells[2], cells[5], cells[6]) == ("", "", "")


def test_a_shown_letter_lists_fields_then_headers_then_redrives() -> None:
    found, history = letter(), [redrive(1, 0, 50)]
    rows = tables.show_rows(Shown(found, history, letter_document(found, history)))
    assert all(len(r) == len(tables.SHOW_COLUMNS) for r in rows)
    names = [name for name, _ in rows]
    assert names[:3] == ["timestamp", "reason", "detail"]
    assert names[9] == "correlation_id" and rows[9][1] == "c-1"
    assert names[10:15] == [f"header {k}" for k, _ in found.headers]
    assert rows[-1] == ["redrive #1", "2026-01-02 03:04:05.678000+00:00 by ops → inbound/0/50"]
    assert isinstance(rows[-1][1], Markup)


def test_redrive_rows_and_footer() -> None:
    sent = Outcome(letter(7), "sent", 1, "inbound", 3, 12)
    refused = Outcome(letter(8), "already_redriven", None, "inbound")
    lost = Outcome(letter(9), "unknown_source_topic", None, None)
    done = Redriven(dry_run=False, outcomes=[sent, refused, lost])
    rows = [tables.redrive_row(o) for o in done.outcomes]
    assert all(len(r) == len(tables.REDRIVE_COLUMNS) for r in rows)
    assert [r[4:] for r in rows] == [
        ["inbound/3/12", "sent"],
        ["inbound", "already redriven"],
        ["?", "unknown source topic"],
    ]
    assert tables.redrive_footer(done) == (
        "sent 1 of 3; 1 already redriven (--force to send again), 1 with an unknown source topic."
    )
    assert list(done.as_json())[:6] == [
        "dry_run",
        "selected",
        "sent",
        "would_send",
        "already_redriven",
        "unknown_source_topic",
    ]
    dry = Redriven(dry_run=True, outcomes=[Outcome(letter(7), "would_send", None, "inbound")])
    assert tables.redrive_footer(dry).startswith("would send 1 of 1;")


def test_held_content_is_one_row_with_its_age_and_expiry() -> None:
    first = datetime(2026, 1, 1, 11, 0, tzinfo=UTC)
    held = Held("b-1", "t-1", "f-1", "essay 1.txt", "c-1", first, first, first + timedelta(hours=1))
    now = first + timedelta(minutes=90, seconds=4.9)
    cells = pending_row(held, now)
    assert len(cells) == len(PENDING_COLUMNS)
    assert cells == [
        "b-1",
        "t-1",
        "f-1 'essay 1.txt'",
        "2026-01-01 11:00:00+00:00",
        "1:30:04",
        "2026-01-01 12:00:00+00:00 [red](overdue)[/red]",
    ]
    assert isinstance(cells[-1], Markup)
    assert pending_row(held, first)[-1] == "2026-01-01 12:00:00+00:00"


def test_an_indexed_batch_is_listed_by_when_it_is_due() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    open_one = entry("b-1", now + timedelta(minutes=5), None, 600, now)
    waiting = entry("b-2", None, now - timedelta(minutes=20), 600, now)
    assert list(open_one) == ["batch_id", "status", "due_at", "seconds_left", "overdue"]
    assert (open_one["status"], open_one["seconds_left"], open_one["overdue"]) == (
        "open",
        300.0,
        False,
    )
    assert (waiting["status"], waiting["due_at"]) == (
        "awaiting_registration",
        "2026-01-01T11:50:00+00:00",
    )
    assert batch_row(open_one) == ["b-1", "open", "2026-01-01T12:05:00+00:00", "0:05:00"]
    overdue = batch_row(waiting)
    assert len(overdue) == len(BATCH_COLUMNS)
    assert overdue[-1] == "[red]overdue by 0:10:00[/red]" and isinstance(overdue[-1], Markup)
