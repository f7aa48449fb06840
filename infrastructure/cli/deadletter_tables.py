"""The tables of ``batchctl dlq``: their columns, and each row's cells from a query's data.

The data comes from ``infrastructure/cli/queries/deadletters.py``; the commands
in ``deadletters.py`` hand both to ``infrastructure/cli/output.py``.
"""

from __future__ import annotations

from typing import Any

from infrastructure.cli.output import Column, Markup
from infrastructure.cli.queries.deadletters import Redriven, Shown
from infrastructure.kafka.dlq_admin import Outcome

LIST_COLUMNS = (
    Column("part", justify="right"),
    Column("offset", justify="right"),
    Column("time"),
    Column("reason", markup=True),
    Column("source"),
    Column("batch"),
    Column("redriven", markup=True),
    Column("detail"),
)


def list_row(row: dict[str, Any]) -> list[str]:
    """One ``dlq list`` summary (its JSON) as the table's cells."""
    source = f"{row['source_topic']}/{row['source_partition']}/{row['source_offset']}"
    redriven = ", ".join(
        f"#{r['attempt']} → {r['target_partition']}/{r['target_offset']}" for r in row["redrives"]
    )
    return [
        str(row["partition"]),
        str(row["offset"]),
        (row["timestamp"] or "")[:19],
        row["reason"],
        source,
        row["batch_id"] or "",
        redriven,
        row["detail"][:80],
    ]


SHOW_COLUMNS = (Column("field", markup=True), Column("value", overflow="fold"))
SHOWN_FIELDS = (
    "timestamp",
    "reason",
    "detail",
    "source_topic",
    "source_partition",
    "source_offset",
    "key",
    "batch_id",
    "event_type",
    "correlation_id",
)


def show_rows(shown: Shown) -> list[list[str]]:
    """``dlq show``'s field/value rows: the summary, every header, each redrive."""
    document = shown.document
    rows = [[name, str(document[name])] for name in SHOWN_FIELDS]
    rows += [[f"header {k}", v] for k, v in document["headers"]]
    rows += [
        [
            f"redrive #{r.attempt}",
            Markup(
                f"{r.sent_at or r.claimed_at} by {r.operator} → "
                f"{r.target_topic}/{r.target_partition}/{r.target_offset}"
            ),
        ]
        for r in shown.history
    ]
    return rows


REDRIVE_COLUMNS = (
    Column("part"),
    Column("offset"),
    Column("reason", markup=True),
    Column("batch"),
    Column("to"),
    Column("status"),
)


def redrive_row(o: Outcome) -> list[str]:
    to = o.target_topic or "?"
    if o.target_partition is not None:
        to += f"/{o.target_partition}/{o.target_offset}"
    return [
        str(o.letter.partition),
        str(o.letter.offset),
        o.letter.reason,
        o.letter.batch_id or "",
        to,
        o.status.replace("_", " "),
    ]


def redrive_footer(done: Redriven) -> str:
    counts = done.counts
    verb = "would send" if done.dry_run else "sent"
    sent = counts["would_send"] if done.dry_run else counts["sent"]
    return (
        f"{verb} {sent} of {len(done.outcomes)}; {counts['already_redriven']} already redriven "
        f"(--force to send again), {counts['unknown_source_topic']} with an unknown source topic."
    )
