"""batchctl status / audit: one batch, as the event store and the read model see it.

The queries are in ``infrastructure/cli/queries/inspection.py``; this module
parses options and renders.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import typer

from infrastructure.cli.common import settings
from infrastructure.cli.events import EventView
from infrastructure.cli.output import Column, JsonOpt, Markup, Part, emit, table
from infrastructure.cli.queries.inspection import batch_history, batch_status
from infrastructure.cli.queries.sides import BothSides, ordered
from projections.slot_view import SUMMARY_FIELDS, ReadModel

BatchIdArg = Annotated[
    str, typer.Argument(metavar="BATCH_ID", help="The upstream batch id.", show_default=False)
]


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
    found = batch_status(settings(), batch_id)
    emit(
        found.as_json(),
        json_output,
        *both_sides(found.sides),
        _timing_line(found.timing),
        _outbox_line(found.outbox),
    )


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
    found = batch_history(settings(), batch_id)
    emit(found.as_json(), json_output, history(batch_id, found.events), *both_sides(found.sides))


HISTORY_COLUMNS = (
    Column("pos", justify="right"),
    Column("ver", justify="right"),
    Column("time", no_wrap=True),
    Column("event", no_wrap=True),
    Column("key facts"),
    Column("correlation id", overflow="fold"),
)


def history(batch_id: str, events: list[EventView]) -> Part:
    rows = [
        [
            str(e.position),
            str(e.version),
            e.timestamp.isoformat(sep=" ", timespec="milliseconds"),
            e.event_type,
            e.facts(),
            e.correlation_id,
        ]
        for e in events
    ]
    return table(rows, HISTORY_COLUMNS, title=f"history of batch {batch_id}")


SIDES_COLUMNS = (
    Column("field", markup=True),
    Column("event store", justify="right"),
    Column("read model", justify="right"),
    Column("", justify="center", markup=True),
)


def both_sides(sides: BothSides) -> list[Part]:
    """The two sides field by field, then whether they agree and each difference."""
    grid = table(sides_rows(sides), SIDES_COLUMNS, title=f"batch {sides.batch_id}")
    if sides.agrees:
        return [grid, Markup("[green]The read model agrees with the event store.[/green]")]
    return [
        grid,
        Markup(
            f"[red]The read model differs from the event store "
            f"({len(sides.differences)} differences):[/red]"
        ),
        *(f"  {diff.describe()}" for diff in sides.differences),
    ]


def sides_rows(sides: BothSides) -> list[list[str]]:
    store = sides.event_store.summary if sides.event_store else {}
    view = sides.read_model.summary if sides.read_model else {}
    rows = []
    for field in ordered({**store, **view}) or list(SUMMARY_FIELDS):
        mine, theirs = store.get(field, "—"), view.get(field, "—")
        rows.append([field, mine, theirs, _mark(mine == theirs)])
    for name in ("available_slots", "assignments"):
        mine_n, theirs_n = _count(sides.event_store, name), _count(sides.read_model, name)
        same = not any(d.key.startswith(name) for d in sides.differences)
        rows.append([name, mine_n, theirs_n, _mark(same and mine_n == theirs_n)])
    return rows


def _mark(same: bool) -> str:
    return "[green]✓[/green]" if same else "[red]✗[/red]"


def _count(model: ReadModel | None, name: str) -> str:
    return "—" if model is None else str(len(getattr(model, name)))
