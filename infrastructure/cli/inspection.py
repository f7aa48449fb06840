"""batchctl status / audit: one batch, as the event store and the read model see it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from domain import Batch
from infrastructure.cli.common import JSON_HELP, batch_service, fail, out, print_json, settings
from infrastructure.cli.events import EventView, fold
from infrastructure.cli.views import BothSides
from infrastructure.postgres.reader import EventStoreReader

BatchIdArg = Annotated[
    str, typer.Argument(metavar="BATCH_ID", help="The upstream batch id.", show_default=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help=JSON_HELP)]


def status(batch_id: BatchIdArg, json_output: JsonOpt = False) -> None:
    """The batch as the aggregate sees it, beside what the Redis read model says.

    Shows status, expected, assigned, available, pending, failed, excess and
    version from both sides and whether they agree. Exit 0 when the batch is
    known (agreeing or not), 2 when neither side knows it.

    Examples:

        batchctl status batch-42

        batchctl status batch-42 --json | jq .agrees
    """
    s = settings()
    with batch_service(s) as service:
        batch = service.get_batch(batch_id)
    sides = BothSides.of(s, batch_id, batch)
    if batch is None and sides.read_model is None:
        why = f"no events in DATABASE_SCHEMA={s.database_schema} and no read model in Redis"
        _unknown(batch_id, why)
    if json_output:
        print_json(sides.as_json())
    else:
        sides.render(out())


def audit(batch_id: BatchIdArg, json_output: JsonOpt = False) -> None:
    """The batch's whole history, then its current state and the read model's.

    One row per stored event: position, version, time, event type, key facts,
    correlation id. Exit 2 when the event store has no events for the batch.

    Examples:

        batchctl audit batch-42

        batchctl audit batch-42 --json | jq '.events[] | .event_type'
    """
    s = settings()
    with batch_service(s) as service, EventStoreReader(service, s) as reader:
        pages = reader.pages(originator_id=Batch.create_id(batch_id))
        events = [EventView.decode(service.mapper, n) for page in pages for n in page]
    if not events:
        _unknown(batch_id, f"no events in DATABASE_SCHEMA={s.database_schema}")
    sides = BothSides.of(s, batch_id, fold(e.event for e in events))
    if json_output:
        print_json({**sides.as_json(), "events": [e.as_json() for e in events]})
        return
    console = out()
    console.print(_history(batch_id, events))
    sides.render(console)


def _history(batch_id: str, events: list[EventView]) -> Table:
    table = Table(title=f"history of batch {batch_id}", title_justify="left")
    table.add_column("pos", justify="right")
    table.add_column("ver", justify="right")
    table.add_column("time", no_wrap=True)
    table.add_column("event", no_wrap=True)
    table.add_column("key facts")
    table.add_column("correlation id", overflow="fold")
    for e in events:
        table.add_row(
            str(e.position),
            str(e.version),
            e.timestamp.isoformat(sep=" ", timespec="milliseconds"),
            e.event_type,
            Text(e.facts()),
            Text(e.correlation_id),
        )
    return table


def _unknown(batch_id: str, why: str) -> None:
    fail(f"unknown batch {batch_id!r}: {why}; check the batch id and DATABASE_SCHEMA")
