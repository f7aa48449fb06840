"""batchctl batches: the batches still to close, soonest due first, from the due-batch index.

The query is in ``infrastructure/cli/queries/batches.py``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import typer

from infrastructure.cli.common import settings
from infrastructure.cli.durations import parse_duration
from infrastructure.cli.output import Column, JsonOpt, Markup, note, render
from infrastructure.cli.queries.batches import due_batches


def batches(
    open_only: Annotated[
        bool, typer.Option("--open", help="Only registered (open) batches, not those awaiting it.")
    ] = False,
    due_within: Annotated[
        str | None,
        typer.Option(
            "--due-within",
            help="Only batches due within this time (90s, 15m, 2h, 1d; overdue ones too).",
            show_default=False,
        ),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Batches not closed yet, soonest due first: open ones by their deadline, unregistered
    ones by when their pending content expires.

    Read from the due-batch index (table batch_due, kept by the follower in every
    worker): as up to date as that follower; a note says when it is behind the store.

    Examples:

        batchctl batches --open --due-within 1h

        batchctl batches --json | jq -r '.batches[] | select(.overdue) | .batch_id'
    """
    window = parse_duration(due_within, "--due-within") if due_within is not None else None
    due = due_batches(settings(), window, open_only)
    if due.behind:
        note(
            f"the due-batch index is at position {due.index_position}, the store at "
            f"{due.store_position}: is a worker running? (its follower keeps the index)"
        )
    render(
        [batch_row(entry) for entry in due.batches],
        COLUMNS,
        json_output=json_output,
        document=due.as_json(),
        title="batches to close (soonest due first)",
        empty="No batches match.",
        footer=f"{len(due.batches)} batches.",
    )


COLUMNS = (Column("batch"), Column("status"), Column("due at"), Column("time left"))


def batch_row(entry: dict[str, Any]) -> list[str]:
    """One listed batch as the table's cells: the time left, or how long overdue."""
    shown = str(timedelta(seconds=int(abs(entry["seconds_left"]))))
    left = Markup(f"[red]overdue by {shown}[/red]") if entry["overdue"] else shown
    return [entry["batch_id"], entry["status"], entry["due_at"], left]
