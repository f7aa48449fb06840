"""batchctl dlq list / show / redrive: the dead-letter topic, read and sent back after a fix.

The reading is in ``infrastructure/kafka/dlq_admin.py``, the audit trail in
``infrastructure/postgres/redrives.py``; this
module parses options and renders. The guide is docs/cli.md ("Dead letters").
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from infrastructure.cli.common import (
    JSON_HELP,
    err,
    fail,
    out,
    print_json,
    progress_bar,
    progress_wanted,
    settings,
)
from infrastructure.cli.durations import parse_since
from infrastructure.kafka.dlq_admin import Letter, Outcome, Scan, read_letters
from infrastructure.kafka.dlq_admin import redrive as redrive_letters
from infrastructure.postgres.redrives import Redrive, RedriveLog
from infrastructure.settings import Settings

app = typer.Typer(
    name="dlq",
    help="Read the dead-letter topic (TOPIC_DLQ) and send chosen letters back after a fix.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

JsonOpt = Annotated[bool, typer.Option("--json", help=JSON_HELP)]
ReasonOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--reason",
        help="Only letters with this dlq.reason (repeatable), e.g. PROCESSING_ERROR.",
        show_default=False,
    ),
]
SinceOpt = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="Only letters dead-lettered since this time (2026-01-01T12:00:00Z) or "
        "this long ago (90m, 2h, 1d).",
        show_default=False,
    ),
]
BatchOpt = Annotated[
    str | None,
    typer.Option("--batch", help="Only letters of this batch_id.", show_default=False),
]
PartitionOpt = Annotated[
    int | None,
    typer.Option("--partition", min=0, help="The DLQ partition.", show_default=False),
]


@dataclass(frozen=True)
class Selection:
    reasons: frozenset[str]
    since: datetime | None
    batch: str | None

    @classmethod
    def of(cls, reasons: list[str] | None, since: str | None, batch: str | None) -> Selection:
        moment = parse_since(since, "--since", datetime.now(UTC)) if since else None
        return cls(frozenset(reasons or ()), moment, batch)

    def __call__(self, letter: Letter) -> bool:
        if self.reasons and letter.reason not in self.reasons:
            return False
        if self.since is not None and (letter.timestamp is None or letter.timestamp < self.since):
            return False
        return self.batch is None or letter.batch_id == self.batch


def quiet_kafka() -> None:
    """aiokafka's own log lines (``Unable connect to ...``) are not for an operator's
    terminal: the one-line error says what failed."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def _read(
    s: Settings,
    keep: Callable[[Letter], bool],
    *,
    partition: int | None = None,
    from_offset: int | None = None,
    to_offset: int | None = None,
    missing_ok: bool = False,
) -> tuple[Scan, list[Letter]]:
    scan = Scan(s.topics.dlq, missing_ok=missing_ok)
    quiet_kafka()

    async def collect() -> list[Letter]:
        return [
            letter
            async for letter in read_letters(
                s, scan, partition=partition, from_offset=from_offset, to_offset=to_offset
            )
            if keep(letter)
        ]

    return scan, asyncio.run(collect())


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _text(raw: bytes | None) -> str | None:
    return raw.decode("utf-8", "replace") if raw is not None else None


def summary_json(letter: Letter, redrives: list[Redrive]) -> dict[str, Any]:
    envelope = letter.envelope or {}
    return {
        "partition": letter.partition,
        "offset": letter.offset,
        "timestamp": _iso(letter.timestamp),
        "reason": letter.reason,
        "detail": letter.detail,
        "source_topic": letter.source_topic,
        "source_partition": letter.source_partition,
        "source_offset": letter.source_offset,
        "key": _text(letter.key),
        "batch_id": letter.batch_id,
        "event_type": envelope.get("event_type") if isinstance(envelope, dict) else None,
        "correlation_id": envelope.get("correlation_id") if isinstance(envelope, dict) else None,
        "value_bytes": len(letter.value) if letter.value is not None else None,
        "redriven_from": letter.redriven_from,
        "redrives": [r.as_json() for r in redrives],
    }


@app.command("list")
def list_(
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    batch: BatchOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """The dead letters, oldest first per partition: reason, source, batch, redrives.

    Reads the whole topic up to its end at start (no consumer group: nothing is
    committed). Exit 0 also when nothing matches.

    Examples:

        batchctl dlq list --reason PROCESSING_ERROR --since 2h

        batchctl dlq list --json | jq -r '.dead_letters[] | "\\(.offset) \\(.reason)"'
    """
    s = settings()
    selection = Selection.of(reason, since, batch)
    rows: list[dict[str, Any]] = []
    slim: list[Letter] = []  # values are not kept: a DLQ can be large

    def keep(letter: Letter) -> bool:
        if selection(letter):
            rows.append(summary_json(letter, []))
            slim.append(replace(letter, value=None))
        return False

    scan, _ = _read(s, keep, missing_ok=True)
    if scan.missing:
        err().print(
            f"note: the broker has no topic {scan.topic!r} (TOPIC_DLQ) yet: nothing was "
            "dead-lettered there, or TOPIC_DLQ / KAFKA_BOOTSTRAP_SERVERS point elsewhere",
            markup=False,
        )
    with RedriveLog(s) as log:
        history = log.history(slim)
    for row, letter in zip(rows, slim, strict=True):
        row["redrives"] = [r.as_json() for r in history.get((letter.partition, letter.offset), [])]
    if json_output:
        print_json(
            {
                "topic": scan.topic,
                "end_offsets": {str(p): o for p, o in scan.end_offsets.items()},
                "count": len(rows),
                "dead_letters": rows,
            }
        )
        return
    console = out()
    if not rows:
        console.print(f"No dead letters match in {scan.topic}.")
        return
    table = Table(title=f"dead letters in {scan.topic}", title_justify="left")
    for name in ("part", "offset", "time", "reason", "source", "batch", "redriven", "detail"):
        table.add_column(name, justify="right" if name in ("part", "offset") else "left")
    for row in rows:
        source = f"{row['source_topic']}/{row['source_partition']}/{row['source_offset']}"
        redriven = ", ".join(
            f"#{r['attempt']} → {r['target_partition']}/{r['target_offset']}"
            for r in row["redrives"]
        )
        table.add_row(
            str(row["partition"]),
            str(row["offset"]),
            (row["timestamp"] or "")[:19],
            row["reason"],
            Text(source),
            Text(row["batch_id"] or ""),
            redriven,
            Text(row["detail"][:80]),
        )
    console.print(table)
    console.print(f"{len(rows)} dead letters.")


@app.command()
def show(
    offset: Annotated[
        int, typer.Argument(min=0, metavar="OFFSET", help="The letter's offset in the DLQ.")
    ],
    partition: PartitionOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """One dead letter in full: every header, the key, the value, earlier redrives.

    Without --partition, OFFSET must exist in exactly one DLQ partition.

    Examples:

        batchctl dlq show 42 --partition 1

        batchctl dlq show 42 --json | jq .envelope.data
    """
    s = settings()
    _, letters = _read(
        s, lambda _: True, partition=partition, from_offset=offset, to_offset=offset
    )
    letters = [w for w in letters if w.offset == offset]
    if not letters:
        where = f"partition {partition}" if partition is not None else "any partition"
        fail(f"no dead letter at offset {offset} in {where} of {s.topics.dlq}; see 'dlq list'")
    if len(letters) > 1:
        found = ", ".join(str(w.partition) for w in letters)
        fail(f"offset {offset} is in partitions {found} of {s.topics.dlq}: add --partition")
    [letter] = letters
    with RedriveLog(s) as log:
        history = log.history([letter]).get((letter.partition, letter.offset), [])
    document = summary_json(letter, history)
    document["headers"] = [[k, v.decode("utf-8", "replace")] for k, v in letter.headers]
    try:
        document["value"] = letter.value.decode("utf-8") if letter.value is not None else None
        document["value_base64"] = None
    except UnicodeDecodeError:
        document["value"] = None
        document["value_base64"] = base64.b64encode(letter.value or b"").decode()
    document["envelope"] = letter.envelope
    if json_output:
        print_json(document)
        return
    console = out()
    table = Table(title=f"dead letter {letter.where}", title_justify="left", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for name in ("timestamp", "reason", "detail", "source_topic", "source_partition"):
        table.add_row(name, Text(str(document[name])))
    for name in ("source_offset", "key", "batch_id", "event_type", "correlation_id"):
        table.add_row(name, Text(str(document[name])))
    for k, v in document["headers"]:
        table.add_row(f"header {k}", Text(v))
    for r in history:
        table.add_row(
            f"redrive #{r.attempt}",
            f"{r.sent_at or r.claimed_at} by {r.operator} → "
            f"{r.target_topic}/{r.target_partition}/{r.target_offset}",
        )
    console.print(table)
    if document["value"] is not None:
        console.print(Text(document["value"]))
    else:
        console.print(f"(value is not UTF-8; base64: {document['value_base64']})")


def _offset_range(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    first, sep, last = text.partition("-")
    try:
        low = int(first)
        high = int(last) if sep else low
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an offset (42) or a range (40-50)", param_hint="--offset"
        ) from None
    if low < 0 or high < low:
        raise typer.BadParameter(f"{text!r} is not an ascending range", param_hint="--offset")
    return low, high


@app.command()
def redrive(
    reason: ReasonOpt = None,
    offset: Annotated[
        str | None,
        typer.Option(
            "--offset",
            help="Only this DLQ offset (42) or inclusive range (40-50); see --partition.",
            show_default=False,
        ),
    ] = None,
    partition: PartitionOpt = None,
    batch: BatchOpt = None,
    since: SinceOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only show what would be sent; send nothing.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Send letters again that were already redriven.")
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """Send chosen dead letters back to their source topic, after a fix.

    Each letter's original key, value and headers go back to its
    dlq.source.topic (dlq.* headers removed, dlq.redriven.from added); every
    redrive is recorded in the table dlq_redrives of DATABASE_SCHEMA, and a
    letter already redriven is skipped unless --force. Choose letters with at
    least one of --reason, --offset, --batch. Exit 2 when every chosen letter
    was already redriven.

    Examples:

        batchctl dlq redrive --reason PROCESSING_ERROR --dry-run

        batchctl dlq redrive --reason PROCESSING_ERROR --since 1h

        batchctl dlq redrive --offset 40-50 --partition 2
    """
    if reason is None and offset is None and batch is None:
        raise typer.BadParameter(
            "choose the letters with --reason, --offset or --batch", param_hint="selection"
        )
    low, high = _offset_range(offset)
    s = settings()
    selection = Selection.of(reason, since, batch)
    _, letters = _read(s, selection, partition=partition, from_offset=low, to_offset=high)
    with (
        RedriveLog(s) as log,
        progress_bar("redriving", progress_wanted(json_output) and not dry_run) as progress,
    ):
        outcomes = asyncio.run(
            redrive_letters(s, letters, log, dry_run=dry_run, force=force, progress=progress)
        )
    counts = {status: sum(o.status == status for o in outcomes) for status in _STATUSES}
    if json_output:
        print_json(
            {
                "dry_run": dry_run,
                "selected": len(outcomes),
                **counts,
                "letters": [o.as_json() for o in outcomes],
            }
        )
    else:
        _render(outcomes, dry_run, counts)
    refused = counts["already_redriven"]
    if refused and not counts["sent"] and not counts["would_send"]:
        first = next(o for o in outcomes if o.status == "already_redriven")
        fail(
            f"{refused} chosen dead letters were already redriven (first: {first.letter.where}); "
            "add --force to send them again"
        )


_STATUSES = ("sent", "would_send", "already_redriven", "unknown_source_topic")


def _render(outcomes: list[Outcome], dry_run: bool, counts: dict[str, int]) -> None:
    console = out()
    if not outcomes:
        console.print("No dead letters match.")
        return
    table = Table(box=None)
    for name in ("part", "offset", "reason", "batch", "to", "status"):
        table.add_column(name)
    for o in outcomes:
        to = o.target_topic or "?"
        if o.target_partition is not None:
            to += f"/{o.target_partition}/{o.target_offset}"
        table.add_row(
            str(o.letter.partition),
            str(o.letter.offset),
            o.letter.reason,
            Text(o.letter.batch_id or ""),
            Text(to),
            o.status.replace("_", " "),
        )
    console.print(table)
    verb = "would send" if dry_run else "sent"
    sent = counts["would_send"] if dry_run else counts["sent"]
    console.print(
        f"{verb} {sent} of {len(outcomes)}; {counts['already_redriven']} already redriven "
        f"(--force to send again), {counts['unknown_source_topic']} with an unknown source topic."
    )
