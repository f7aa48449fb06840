"""batchctl replay: stored events in global order, streamed page by page."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich import box
from rich.console import Console

from domain import Batch
from infrastructure.cli.common import (
    batch_service,
    out,
    print_json_line,
    settings,
)
from infrastructure.cli.events import EventView, event_classes, event_topic
from infrastructure.cli.output import Column, Part, table
from infrastructure.postgres.reader import EventStoreReader


def replay(
    from_position: Annotated[
        int, typer.Option("--from-position", min=1, help="First position (inclusive).")
    ] = 1,
    to_position: Annotated[
        int | None,
        typer.Option("--to-position", min=1, help="Last position (inclusive); default: the end."),
    ] = None,
    batch: Annotated[
        str | None, typer.Option("--batch", help="Only this batch's events.", show_default=False)
    ] = None,
    event_type: Annotated[
        str | None,
        typer.Option(
            "--event-type", help="Only this event type, e.g. SlotAssigned.", show_default=False
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per line (see docs/cli.md).")
    ] = False,
) -> None:
    """Stream stored events in global order (position = the store's notification id).

    Events are read a page at a time, so any range of any size is safe.

    Examples:

        batchctl replay --from-position 1000 --to-position 2000

        batchctl replay --batch batch-42 --event-type SlotAssigned

        batchctl replay --json | jq -c 'select(.event_type == "BatchCompleted")'
    """
    if to_position is not None and to_position < from_position:
        raise typer.BadParameter(
            f"must not be below --from-position ({from_position})", param_hint="--to-position"
        )
    topics: tuple[str, ...] = ()
    if event_type is not None:
        topic = event_topic(event_type)
        if topic is None:
            raise typer.BadParameter(
                f"unknown event type {event_type!r}; one of {', '.join(event_classes())}",
                param_hint="--event-type",
            )
        topics = (topic,)
    s = settings()
    console = out()
    shown = 0
    with batch_service(s) as service, EventStoreReader(service, s) as reader:
        for page in reader.pages(
            start=from_position,
            stop=to_position,
            originator_id=Batch.create_id(batch) if batch is not None else None,
            topics=topics,
        ):
            views = [EventView.decode(service.mapper, n) for n in page]
            if json_output:
                for view in views:
                    print_json_line(view.as_json())
            else:
                console.print(_page_table(views, header=shown == 0))
            shown += len(views)
            sys.stdout.flush()
    if not shown and not json_output:
        _nothing(console)


PAGE_COLUMNS = (  # fixed widths so consecutive pages line up
    Column("pos", justify="right", width=8, no_wrap=True),
    Column("batch", width=20, overflow="fold"),
    Column("ver", justify="right", width=5, no_wrap=True),
    Column("time", width=29, no_wrap=True),
    Column("event", width=25, no_wrap=True),
    Column("key facts", width=50, overflow="fold"),
    Column("correlation id", width=36, overflow="fold"),
)


def _page_table(views: list[EventView], header: bool) -> Part:
    """One page as table rows."""
    rows = [
        [
            str(v.position),
            v.batch_id,
            str(v.version),
            v.timestamp.isoformat(sep=" ", timespec="milliseconds"),
            v.event_type,
            v.facts(),
            v.correlation_id,
        ]
        for v in views
    ]
    return table(rows, PAGE_COLUMNS, box=box.SIMPLE_HEAD, show_header=header, show_edge=False)


def _nothing(console: Console) -> None:
    console.print("No stored events match.")
