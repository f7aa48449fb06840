"""batchctl status / audit: one batch, as the event store and the read model see it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from domain import Batch
from infrastructure.cli.common import JSON_HELP, batch_service, fail, out, print_json, settings
from infrastructure.cli.events import EventView, fold
from infrastructure.cli.views import BothSides
from infrastructure.postgres.parking import PARKED_TABLE
from infrastructure.postgres.reader import EventStoreReader
from infrastructure.processes.outbox import TRACKING_TABLE as OUTBOX_TRACKING_TABLE

BatchIdArg = Annotated[
    str, typer.Argument(metavar="BATCH_ID", help="The upstream batch id.", show_default=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help=JSON_HELP)]


def status(batch_id: BatchIdArg, json_output: JsonOpt = False) -> None:
    """The batch as the aggregate sees it, beside what the Redis read model says.

    Shows status, expected, assigned, available, pending, failed, excess and
    version from both sides and whether they agree; then the deadline and the
    time left, and whether the outbox has published the batch's last event. Exit 0 when the batch is
    known (agreeing or not), 2 when neither side knows it.

    Examples:

        batchctl status batch-42

        batchctl status batch-42 --json | jq .agrees
    """
    s = settings()
    with batch_service(s) as service, EventStoreReader(service, s) as reader:
        batch = service.get_batch(batch_id)
        now = service.clock()
        last = reader.last_position(Batch.create_id(batch_id))
        published = reader.tracked_position(OUTBOX_TRACKING_TABLE, service.name)
        parked = reader.parked_count(PARKED_TABLE, batch_id)
    sides = BothSides.of(s, batch_id, batch)
    if batch is None and sides.read_model is None:
        why = f"no events in DATABASE_SCHEMA={s.database_schema} and no read model in Redis"
        _unknown(batch_id, why)
    timing = _timing(batch, now)
    outbox = {
        "last_event_position": last,
        "outbox_position": published,
        "published": None if published is None or last is None else published >= last,
        "parked": parked,
    }
    if json_output:
        print_json({**sides.as_json(), **timing, "outbox": outbox})
        return
    console = out()
    sides.render(console)
    console.print(_timing_line(timing), markup=False)
    console.print(_outbox_line(outbox), markup=False)


def _timing(batch: Batch | None, now: datetime) -> dict[str, Any]:
    deadline = batch.deadline if batch is not None else None
    left = None
    if deadline is not None and batch is not None and batch.status == "open":
        left = round((deadline - now).total_seconds(), 3)
    return {
        "deadline": deadline.isoformat() if deadline is not None else None,
        "seconds_left": left,
    }


def _timing_line(timing: dict[str, Any]) -> str:
    if timing["deadline"] is None:
        return "deadline: none (not registered)"
    left = timing["seconds_left"]
    if left is None:
        return f"deadline: {timing['deadline']} (closed)"
    if left < 0:
        return (
            f"deadline: {timing['deadline']} (passed {_span(-left)} ago: the sweep in "
            "`batchctl worker` times it out)"
        )
    return f"deadline: {timing['deadline']} ({_span(left)} left)"


def _span(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


def _outbox_line(outbox: dict[str, Any]) -> str:
    last, at = outbox["last_event_position"], outbox["outbox_position"]
    if last is None:
        return "outbox: no stored events"
    if at is None:
        return "outbox: unknown (no outbox_tracking table: has an outbox ever run?)"
    parked = f"; {outbox['parked']} events parked" if outbox["parked"] else ""
    state = "published" if outbox["published"] else "not yet published"
    return f"outbox: {state} (the batch's last event is at {last}, the outbox at {at}){parked}"


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
