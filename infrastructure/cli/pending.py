"""batchctl pending: content held for batches not yet registered, oldest first.

The query (what the event store holds) is in ``infrastructure/cli/queries/pending.py``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

import typer

from infrastructure.cli.common import settings
from infrastructure.cli.durations import parse_duration
from infrastructure.cli.output import Column, JsonOpt, Markup, render
from infrastructure.cli.queries.pending import Held, pending_content


def pending(
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Only content pending longer than this (90s, 15m, 2h, 1d).",
            show_default=False,
        ),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Content held for batches not yet registered, oldest first, with its expiry time.

    A batch's pending content is released (PendingContentExpired) by the sweep
    once its first content has waited PENDING_TTL_SECONDS; "overdue" marks
    content past that time that is still held (no worker sweeping?).

    Examples:

        batchctl pending --older-than 1h

        batchctl pending --json | jq -r '.pending[] | "\\(.batch_id) \\(.expires_at)"'
    """
    minimum = parse_duration(older_than, "--older-than") if older_than else timedelta(0)
    found = pending_content(settings(), minimum)
    longer = f" for longer than {older_than}" if older_than else ""
    render(
        [pending_row(h, found.now) for h in found.held],
        COLUMNS,
        json_output=json_output,
        document=found.as_json(),
        title="content pending registration (oldest first)",
        empty=f"No content is pending{longer}.",
        footer=f"{len(found.held)} pending in {found.batches} batches.",
    )


COLUMNS = (
    Column("batch"),
    Column("text_storage_id"),
    Column("file"),
    Column("pending since"),
    Column("age"),
    Column("expires at"),
)


def pending_row(h: Held, now: datetime) -> list[str]:
    """One held piece of content as the table's cells (age and expiry as of ``now``)."""
    age = str(timedelta(seconds=int((now - h.pended_at).total_seconds())))
    expires = h.expires_at.isoformat(sep=" ", timespec="seconds")
    return [
        h.batch_id,
        h.text_storage_id,
        f"{h.file_upload_id} {h.original_file_name!r}",
        h.pended_at.isoformat(sep=" ", timespec="seconds"),
        age,
        Markup(expires + (" [red](overdue)[/red]" if now >= h.expires_at else "")),
    ]
