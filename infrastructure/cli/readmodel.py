"""batchctl rebuild / verify: the Redis read model against the event store."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Annotated, Any

import typer
from eventsourcing.domain import OriginatorIDError, OriginatorVersionError

from domain import Batch
from infrastructure.cli.common import (
    container,
    fail,
    out,
    progress_bar,
    progress_wanted,
    settings,
)
from infrastructure.cli.compare import Difference, compare
from infrastructure.cli.events import fold
from infrastructure.cli.output import JsonOpt, Markup, emit, note
from infrastructure.postgres.reader import EventStoreReader
from infrastructure.processes.projector import rebuild as rebuild_read_model
from infrastructure.redis.view import RedisSlotView
from infrastructure.settings import Settings
from projections.slot_view import read_model_of

ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Rebuild also from an empty store or one behind the read model (drops what "
        "the store does not have).",
    ),
]


def rebuild(json_output: JsonOpt = False, force: ForceOpt = False) -> None:
    """Drop the Redis read model and rebuild it from the event store.

    The read model is derived data, so this is safe at any time, also with a
    projector running. It refuses (exit 2, saying what it would drop) when
    the event store is empty but the read model is not, or when the store's
    last position is behind what the read model has seen (the wrong
    DATABASE_URL or DATABASE_SCHEMA, or a store restored from an older
    backup): check the settings, then --force. Prints the events and batches
    replayed and the time taken.

    Examples:

        batchctl rebuild && batchctl verify

        batchctl rebuild --json

        batchctl rebuild --force     (after a restore of PostgreSQL from a backup)
    """
    s = settings()
    with container(s) as built:
        service, view = built.service, built.view
        if not force:
            _refuse_a_wipe(s, service.recorder.max_notification_id() or 0, view)
        with progress_bar("rebuilding", progress_wanted(json_output)) as progress:
            summary = rebuild_read_model(s, progress, service=service, view=view)
    result = {
        "events": summary.events,
        "batches": summary.batches,
        "seconds": round(summary.seconds, 3),
    }
    emit(
        result,
        json_output,
        f"Rebuilt the read model from the event store: {summary.events} events, "
        f"{summary.batches} batches in {summary.seconds:.2f} s.",
    )


@dataclass
class Findings:
    """What verify found; the differences are kept only for --json."""

    keep: bool
    batches: int = 0
    events: int = 0
    count: int = 0
    batches_differing: int = 0
    read_model_only: int = 0
    differences: list[Difference] = field(default_factory=list)

    def add(self, found: list[Difference], echo: Callable[[Difference], None]) -> None:
        if not found:
            return
        self.count += len(found)
        self.batches_differing += 1
        if self.keep:
            self.differences.extend(found)
        for diff in found:
            echo(diff)


def verify(json_output: JsonOpt = False) -> None:
    """Fold every batch's stream and compare it key by key with the read model.

    Also reports read-model batches the event store does not know. Prints each
    difference; exit 1 when there is any, 0 when everything agrees. Run it
    when the projector has caught up (the output shows both positions).

    Examples:

        batchctl verify || batchctl rebuild

        batchctl verify --json | jq '.differences[]'
    """
    s = settings()
    started = time.monotonic()
    console = out()
    found = Findings(keep=json_output)

    def echo(diff: Difference) -> None:
        if not json_output:
            console.print(diff.describe(), markup=False)

    with progress_bar("verifying", progress_wanted(json_output)) as progress:
        store_position, view_position = _scan(s, found, echo, progress)
    seconds = time.monotonic() - started
    behind = view_position is not None and view_position < store_position
    emit(
        _verify_json(found, store_position, view_position, seconds),
        json_output,
        _verify_summary(found, seconds),
    )
    if behind and not json_output:
        note(
            f"the read model is at position {view_position}, the store at "
            f"{store_position}; differences may be projector lag"
        )
    if found.count:
        raise typer.Exit(1)


def _scan(
    s: Settings,
    found: Findings,
    echo: Callable[[Difference], None],
    progress: Callable[[int, int], None],
) -> tuple[int, int | None]:
    """Compare every stream, then look for read-model-only batches; return both positions."""
    with container(s) as built, EventStoreReader(built.service, s) as reader:
        service, view = built.service, built.view
        total = reader.count_events()
        positions = reader.max_position(), view.position()
        for stream in reader.streams():
            found.batches += 1
            found.events += len(stream)
            events = [service.mapper.to_domain_event(e) for e in stream]
            batch_id = str(vars(events[0]).get("batch_id", stream[0].originator_id))
            try:
                batch = fold(events)
            except (OriginatorVersionError, OriginatorIDError) as e:
                broken = f"broken stream: {type(e).__name__} {e}"
                found.add([Difference(batch_id, "stream", broken, None)], echo)
                continue
            found.add(compare(batch_id, _model(batch), view.read_batch(batch_id)), echo)
            progress(found.events, total)
        for chunk in _chunks(view.batch_ids(), 500):
            known = reader.known_streams([Batch.create_id(b) for b in chunk])
            for batch_id in chunk:
                if Batch.create_id(batch_id) not in known:
                    found.read_model_only += 1
                    found.add([Difference(batch_id, "batch", None, "present")], echo)
    return positions


def _refuse_a_wipe(s: Settings, head: int, view: RedisSlotView) -> None:
    """Fail when a rebuild would drop read-model data the store cannot give back."""
    position = view.position()
    where = f"DATABASE_SCHEMA={s.database_schema} of DATABASE_URL"
    if head == 0:
        batches = sum(1 for _ in view.batch_ids())
        if batches or position:
            fail(
                f"refusing to rebuild: the event store ({where}) is empty, so a rebuild would "
                f"drop all {batches} batches of the read model (REDIS_KEY_PREFIX="
                f"{s.redis_key_prefix!r}, position {position}); check DATABASE_URL and "
                "DATABASE_SCHEMA, or use --force to empty the read model"
            )
    elif position is not None and head < position:
        fail(
            f"refusing to rebuild: the event store ({where}) ends at position {head} but the "
            f"read model has seen position {position}, so a rebuild would drop or roll back "
            "what the store does not have; check DATABASE_URL and DATABASE_SCHEMA (or, after "
            "restoring the store from a backup, use --force)"
        )


def _model(batch: Batch | None) -> Any:
    return read_model_of(batch) if batch is not None else None


def _verify_json(
    found: Findings, store_position: int, view_position: int | None, seconds: float
) -> dict[str, Any]:
    return {
        "agrees": not found.count,
        "batches": found.batches,
        "events": found.events,
        "batches_differing": found.batches_differing,
        "read_model_only": found.read_model_only,
        "store_position": store_position,
        "read_model_position": view_position,
        "seconds": round(seconds, 3),
        "differences": [d.as_json() for d in found.differences],
    }


def _verify_summary(found: Findings, seconds: float) -> Markup:
    checked = f"{found.batches} batches ({found.events} events) in {seconds:.2f} s"
    if not found.count:
        return Markup(f"[green]The read model agrees with the event store:[/green] {checked}.")
    return Markup(
        f"[red]{found.count} differences in {found.batches_differing} batches[/red] "
        f"({found.read_model_only} only in the read model); checked {checked}."
    )


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk
