"""batchctl pending: content held for batches not yet registered, oldest first.

Computed from the event store (the truth): every stream with ``ContentPended``
and neither ``BatchRegistered`` nor ``PendingContentExpired`` is folded; its
pending content is listed with the time it arrived and the batch's expiry time
(first pending + PENDING_TTL_SECONDS), after which the sweep releases it with
``PendingContentExpired``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from infrastructure.cli.common import JSON_HELP, batch_service, out, print_json, settings
from infrastructure.cli.durations import parse_duration
from infrastructure.cli.events import EventView, event_topic, fold
from infrastructure.postgres.reader import EventStoreReader


@dataclass(frozen=True)
class Held:
    batch_id: str
    text_storage_id: str
    file_upload_id: str
    original_file_name: str
    correlation_id: str
    pended_at: datetime
    first_pending_at: datetime
    expires_at: datetime

    def as_json(self, now: datetime) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "text_storage_id": self.text_storage_id,
            "file_upload_id": self.file_upload_id,
            "original_file_name": self.original_file_name,
            "correlation_id": self.correlation_id,
            "pended_at": self.pended_at.isoformat(),
            "age_seconds": round((now - self.pended_at).total_seconds(), 3),
            "batch_first_pending_at": self.first_pending_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "overdue": now >= self.expires_at,
        }


def pending(
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Only content pending longer than this (90s, 15m, 2h, 1d).",
            show_default=False,
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Content held for batches not yet registered, oldest first, with its expiry time.

    A batch's pending content is released (PendingContentExpired) by the sweep
    once its first content has waited PENDING_TTL_SECONDS; "overdue" marks
    content past that time that is still held (no worker sweeping?).

    Examples:

        batchctl pending --older-than 1h

        batchctl pending --json | jq -r '.pending[] | "\\(.batch_id) \\(.expires_at)"'
    """
    minimum = parse_duration(older_than, "--older-than") if older_than else timedelta(0)
    s = settings()
    now = datetime.now(UTC)
    ttl = timedelta(seconds=s.pending_ttl_seconds)
    held: list[Held] = []
    pended = event_topic("ContentPended")
    closing = [event_topic("BatchRegistered"), event_topic("PendingContentExpired")]
    assert pended is not None and None not in closing
    with batch_service(s) as service, EventStoreReader(service, s) as reader:
        for originator_id in reader.pending_streams(pended, [t for t in closing if t]):
            events = [
                EventView.decode(service.mapper, n)
                for page in reader.pages(originator_id=originator_id)
                for n in page
            ]
            batch = fold(e.event for e in events)
            if batch is None or batch.status != "awaiting_registration":
                continue
            first = batch.first_pending_at or events[0].timestamp
            still = set(batch.pending)
            for e in events:
                if e.event_type == "ContentPended" and e.data["text_storage_id"] in still:
                    held.append(
                        Held(
                            batch_id=e.batch_id,
                            text_storage_id=e.data["text_storage_id"],
                            file_upload_id=e.data["file_upload_id"],
                            original_file_name=e.data["original_file_name"],
                            correlation_id=e.correlation_id,
                            pended_at=e.timestamp,
                            first_pending_at=first,
                            expires_at=first + ttl,
                        )
                    )
    held = sorted(
        (h for h in held if now - h.pended_at >= minimum),
        key=lambda h: (h.pended_at, h.batch_id, h.text_storage_id),
    )
    if json_output:
        print_json(
            {
                "now": now.isoformat(),
                "pending_ttl_seconds": s.pending_ttl_seconds,
                "count": len(held),
                "batches": len({h.batch_id for h in held}),
                "pending": [h.as_json(now) for h in held],
            }
        )
        return
    console = out()
    if not held:
        longer = f" for longer than {older_than}" if older_than else ""
        console.print(f"No content is pending{longer}.")
        return
    table = Table(title="content pending registration (oldest first)", title_justify="left")
    for name in ("batch", "text_storage_id", "file", "pending since", "age", "expires at"):
        table.add_column(name)
    for h in held:
        age = str(timedelta(seconds=int((now - h.pended_at).total_seconds())))
        expires = h.expires_at.isoformat(sep=" ", timespec="seconds")
        table.add_row(
            Text(h.batch_id),
            Text(h.text_storage_id),
            Text(f"{h.file_upload_id} {h.original_file_name!r}"),
            h.pended_at.isoformat(sep=" ", timespec="seconds"),
            age,
            expires + (" [red](overdue)[/red]" if now >= h.expires_at else ""),
        )
    console.print(table)
    console.print(f"{len(held)} pending in {len({h.batch_id for h in held})} batches.")
