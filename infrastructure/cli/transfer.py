"""batchctl export / import: the event store as JSON lines.

Format ``batchslot-events`` version 1 (UTF-8, one JSON object per line):

- line 1, the header: ``{"format": "batchslot-events", "version": 1,
  "application": "BatchService", "exported_at": "<RFC 3339>", "max_position": N}``
- then every stored event in global order: ``{"position": P, "originator_id":
  "<uuid>", "originator_version": V, "topic": "domain.batch:Batch.<Type>",
  "state": {...}}`` where ``state`` is the stored JSON exactly as the
  library wrote it (datetimes stay ``{"_type_": "datetime_iso", ...}``).

Import writes each event back byte for byte (compact JSON, keys in the same
order), so the streams, their versions and every event id derived from them
are unchanged; positions are assigned afresh in file order. Snapshots are not
exported: they are a cache the service rebuilds. Import refuses a store that
already holds events unless ``--resume`` is given; then an event already stored
with identical content is skipped and one stored with different content stops
the import. Each page is committed on its own, so an interrupted import is
completed by running it again with ``--resume``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any
from uuid import UUID

import typer
from eventsourcing.persistence import IntegrityError, Mapper, StoredEvent

from application.service import BatchService
from domain import Batch
from infrastructure.cli.common import (
    batch_service,
    err,
    fail,
    print_json,
    progress_bar,
    progress_wanted,
    settings,
)
from infrastructure.postgres.reader import PAGE_SIZE, EventStoreReader

FORMAT = "batchslot-events"
VERSION = 1


def export(
    output: Annotated[
        str, typer.Option("--output", "-o", help="File to write, or - for stdout.")
    ] = "-",
) -> None:
    """Write every stored event to a JSON lines file (format in docs/cli.md).

    A file is written beside its final name and renamed when complete, so a
    failed export never leaves a truncated file behind.

    Examples:

        batchctl export --output events.jsonl

        batchctl export | gzip > events.jsonl.gz
    """
    s = settings()
    to_stdout = output == "-"
    show = progress_wanted() and not (to_stdout and sys.stdout.isatty())
    with batch_service(s) as service, EventStoreReader(service, s) as reader:
        last = reader.max_position()
        header = {
            "format": FORMAT,
            "version": VERSION,
            "application": service.name,
            "exported_at": datetime.now(UTC).isoformat(),
            "max_position": last,
        }
        with _target(output) as sink, progress_bar("exporting", show) as progress:
            sink.write(_line(header))
            count = 0
            for page in reader.pages(stop=last):
                for n in page:
                    sink.write(_line(_record(n.id, n)))
                count += len(page)
                progress(page[-1].id, last)
    where = "stdout" if to_stdout else output
    err().print(f"Exported {count} events (positions up to {last}) to {where}.", markup=False)


def import_(
    file: Annotated[
        str, typer.Argument(metavar="FILE", help="A batchctl export file, or - for stdin.")
    ],
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Allow a non-empty store: skip events already stored with identical content.",
        ),
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Load an export into the event store (an empty one, unless --resume).

    Every line is checked (known event type, stream id matching its batch id)
    before anything is written when FILE is a regular file. Run
    `batchctl rebuild` afterwards to rebuild the Redis read model.

    Examples:

        DATABASE_SCHEMA=restore batchctl import events.jsonl

        gunzip -c events.jsonl.gz | batchctl import - --resume
    """
    s = settings()
    with batch_service(s) as service, EventStoreReader(service, s) as reader:
        if not resume and (top := reader.max_position()):
            fail(
                f"the event store (DATABASE_SCHEMA={s.database_schema}) already holds events "
                f"up to position {top}; import into an empty schema or pass --resume"
            )
        show = progress_wanted(json_output)
        if file != "-":
            with _source(file) as lines, progress_bar("checking", show) as progress:
                for _ in _records(file, lines, service.mapper, progress):
                    pass
        with _source(file) as lines, progress_bar("importing", show) as progress:
            imported, skipped, batches = _load(
                file, _records(file, lines, service.mapper, progress), service, reader
            )
    summary = {"imported": imported, "skipped": skipped, "batches": batches}
    if json_output:
        print_json(summary)
        return
    err().print(
        f"Imported {imported} events of {batches} batches ({skipped} already present) "
        f"into DATABASE_SCHEMA={s.database_schema}. "
        "Run `batchctl rebuild` to rebuild the read model.",
        markup=False,
    )


# ---------------------------------------------------------------- helpers


def _record(position: int, stored: StoredEvent) -> dict[str, Any]:
    return {
        "position": position,
        "originator_id": str(stored.originator_id),
        "originator_version": stored.originator_version,
        "topic": stored.topic,
        "state": json.loads(stored.state),
    }


def _line(document: dict[str, Any]) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n"


def _state_bytes(state: dict[str, Any]) -> bytes:
    """The library's own JSON encoding (compact, non-ASCII kept), so bytes round-trip."""
    return json.dumps(state, ensure_ascii=False, separators=(",", ":")).encode("utf8")


@contextmanager
def _target(output: str) -> Iterator[IO[str]]:
    if output == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    final = Path(output)
    partial = final.with_name(final.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as f:
            yield f
        os.replace(partial, final)
    except OSError as e:
        partial.unlink(missing_ok=True)
        fail(f"--output {output}: {e.strerror or e}")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


@contextmanager
def _source(file: str) -> Iterator[Iterator[tuple[int, str, int]]]:
    """(line number, line, bytes read so far) of FILE, or of stdin (bytes read: 0)."""
    if file == "-":
        with nullcontext(sys.stdin) as f:
            yield ((i, line, 0) for i, line in enumerate(f, 1))
        return
    try:
        f = open(file, "rb")  # noqa: SIM115 - closed below, bytes for exact progress
    except OSError as e:
        fail(f"FILE {file}: {e.strerror or e}")
    with f:

        def lines() -> Iterator[tuple[int, str, int]]:
            for i, raw in enumerate(f, 1):
                try:
                    yield i, raw.decode("utf-8"), f.tell()
                except UnicodeDecodeError:
                    fail(f"{file} line {i}: not UTF-8")

        yield lines()


def _records(
    file: str,
    lines: Iterator[tuple[int, str, int]],
    mapper: Mapper[UUID],
    progress: Any,
) -> Iterator[StoredEvent]:
    """The file's events, each checked; fails with the line number on the first bad one."""
    size = os.path.getsize(file) if file != "-" and os.path.isfile(file) else 0
    first = next(lines, None)
    if first is None:
        fail(f"{file}: empty; expected a batchctl export (header line first)")
    _check_header(file, first[1])
    for number, text, done in lines:
        if not text.strip():
            continue
        try:
            yield _parse(text, mapper)
        except (ValueError, TypeError, KeyError) as e:
            fail(f"{file} line {number}: {e}")
        if size and number % PAGE_SIZE == 0:
            progress(done, size)
    if size:
        progress(size, size)


def _check_header(file: str, text: str) -> None:
    try:
        header = json.loads(text)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        fail(f"{file} line 1: not a batchctl export (no {FORMAT!r} header)")
    if header.get("version") != VERSION:
        fail(f"{file} line 1: format version {header.get('version')!r}, expected {VERSION}")


def _parse(text: str, mapper: Mapper[UUID]) -> StoredEvent:
    record = json.loads(text)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    state = record["state"]
    if not isinstance(state, dict):
        raise ValueError("'state' must be a JSON object")
    version = record["originator_version"]
    if not isinstance(version, int) or version < 1:
        raise ValueError("'originator_version' must be a positive integer")
    stored = StoredEvent(
        originator_id=UUID(str(record["originator_id"])),
        originator_version=version,
        topic=str(record["topic"]),
        state=_state_bytes(state),
    )
    try:
        event = mapper.to_domain_event(stored)
    except Exception as e:
        raise ValueError(f"cannot decode event {stored.topic!r}: {e}") from None
    if not isinstance(event, Batch.Event):
        raise ValueError(f"{stored.topic!r} is not a Batch event")
    batch_id = str(vars(event).get("batch_id", ""))
    if Batch.create_id(batch_id) != stored.originator_id:
        raise ValueError(f"originator_id is not the stream of batch {batch_id!r}")
    return stored


def _load(
    file: str,
    records: Iterator[StoredEvent],
    service: BatchService,
    reader: EventStoreReader,
) -> tuple[int, int, int]:
    imported = skipped = streams = 0
    page: list[StoredEvent] = []

    def flush() -> None:
        nonlocal imported, skipped
        keys = [(UUID(str(e.originator_id)), e.originator_version) for e in page]
        existing = reader.existing(keys)
        fresh = []
        for e, key in zip(page, keys, strict=True):
            if key not in existing:
                fresh.append(e)
                continue
            if not _same(existing[key], e):
                fail(
                    f"{file}: event {key[0]} version {key[1]} is already stored with different "
                    "content; this store is not a copy of the export"
                )
            skipped += 1
        if fresh:
            try:
                service.recorder.insert_events(fresh)
            except IntegrityError:
                fail(f"{file}: an event appears twice, or the store is being written meanwhile")
        imported += len(fresh)
        page.clear()

    for stored in records:
        page.append(stored)
        streams += stored.originator_version == 1
        if len(page) >= PAGE_SIZE:
            flush()
    if page:
        flush()
    return imported, skipped, streams


def _same(a: StoredEvent, b: StoredEvent) -> bool:
    return a.topic == b.topic and json.loads(a.state) == json.loads(b.state)
