"""batchctl batches: the batches still to close, soonest due first, from the due-batch index."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from infrastructure.cli.common import JSON_HELP, container, err, out, print_json, settings
from infrastructure.cli.durations import parse_duration

JsonOpt = Annotated[bool, typer.Option("--json", help=JSON_HELP)]


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
    s = settings()
    ttl = s.pending_ttl_seconds
    with container(s) as built:
        service, index = built.service, built.due_index
        now = service.clock()
        rows = index.listing(
            ttl, until=now + window if window is not None else None, open_only=open_only
        )
        position, head = index.position(), service.recorder.max_notification_id() or 0
    found = [_entry(batch_id, deadline, pending, ttl, now) for batch_id, deadline, pending in rows]
    if position < head:
        err().print(
            f"note: the due-batch index is at position {position}, the store at {head}: "
            "is a worker running? (its follower keeps the index)",
            markup=False,
        )
    if json_output:
        print_json(
            {
                "now": now.isoformat(),
                "index_position": position,
                "store_position": head,
                "count": len(found),
                "batches": found,
            }
        )
        return
    console = out()
    if not found:
        console.print("No batches match.")
        return
    table = Table(title="batches to close (soonest due first)", title_justify="left")
    for name in ("batch", "status", "due at", "time left"):
        table.add_column(name)
    for entry in found:
        left = entry["seconds_left"]
        shown = str(timedelta(seconds=int(abs(left))))
        table.add_row(
            Text(entry["batch_id"]),
            entry["status"],
            entry["due_at"],
            f"[red]overdue by {shown}[/red]" if entry["overdue"] else shown,
        )
    console.print(table)
    console.print(f"{len(found)} batches.")


def _entry(
    batch_id: str, deadline: datetime | None, pending: datetime | None, ttl: int, now: datetime
) -> dict[str, Any]:
    if deadline is not None:
        status, due = "open", deadline
    else:
        assert pending is not None
        status, due = "awaiting_registration", pending + timedelta(seconds=ttl)
    left = (due - now).total_seconds()
    return {
        "batch_id": batch_id,
        "status": status,
        "due_at": due.isoformat(),
        "seconds_left": round(left, 3),
        "overdue": left <= 0,
    }
