"""batchctl dlq list / show / redrive: the dead-letter topic, read and sent back after a fix.

The queries are in ``infrastructure/cli/queries/deadletters.py``; this module
parses options and renders. The guide is docs/cli.md ("Dead letters").
"""

from __future__ import annotations

from typing import Annotated

import typer

from infrastructure.cli.common import fail, progress_bar, progress_wanted, settings
from infrastructure.cli.deadletter_tables import (
    LIST_COLUMNS,
    REDRIVE_COLUMNS,
    SHOW_COLUMNS,
    list_row,
    redrive_footer,
    redrive_row,
    show_rows,
)
from infrastructure.cli.output import JsonOpt, emit, note, render, table, verbatim
from infrastructure.cli.queries import deadletters as query

app = typer.Typer(
    name="dlq",
    help="Read the dead-letter topic (TOPIC_DLQ) and send chosen letters back after a fix.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

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
    listing = query.list_letters(s, query.Selection.of(reason, since, batch))
    topic = listing.scan.topic
    if listing.scan.missing:
        note(
            f"the broker has no topic {topic!r} (TOPIC_DLQ) yet: nothing was "
            "dead-lettered there, or TOPIC_DLQ / KAFKA_BOOTSTRAP_SERVERS point elsewhere"
        )
    listing = query.with_redrives(s, listing)
    render(
        [list_row(row) for row in listing.rows],
        LIST_COLUMNS,
        json_output=json_output,
        document=listing.as_json(),
        title=f"dead letters in {topic}",
        empty=f"No dead letters match in {topic}.",
        footer=f"{len(listing.rows)} dead letters.",
    )


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
    shown = query.show_letter(settings(), offset, partition)
    document = shown.document
    value = document["value"]
    emit(
        document,
        json_output,
        table(
            show_rows(shown),
            SHOW_COLUMNS,
            title=f"dead letter {shown.letter.where}",
            show_header=False,
        ),
        verbatim(value)
        if value is not None
        else f"(value is not UTF-8; base64: {document['value_base64']})",
    )


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
    offsets = _offset_range(offset)
    s = settings()
    selection = query.Selection.of(reason, since, batch)
    bar = progress_bar("redriving", progress_wanted(json_output) and not dry_run)
    done = query.redrive(s, selection, offsets, partition, bar, dry_run=dry_run, force=force)
    counts = done.counts
    render(
        [redrive_row(o) for o in done.outcomes],
        REDRIVE_COLUMNS,
        json_output=json_output,
        document=done.as_json(),
        empty="No dead letters match.",
        footer=redrive_footer(done),
        box=None,
    )
    refused = counts["already_redriven"]
    if refused and not counts["sent"] and not counts["would_send"]:
        first = next(o for o in done.outcomes if o.status == "already_redriven")
        fail(
            f"{refused} chosen dead letters were already redriven (first: {first.letter.where}); "
            "add --force to send them again"
        )
