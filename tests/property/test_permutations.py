"""Order independence: messages arrive in any order (CONTRACT §1), so every
arrival order of the same messages must end in the same outcome counts.

Two properties, each over a drawn message set and a drawn (hidden) order:

- content only, with duplicates and more files than slots: as many assigned
  and as many excess as when the registration comes first;
- files reported as content, as a failure, or both (and under a second
  storage id), no more files than slots: CONTRACT §2 "One file, one outcome".
  Every file counts exactly once toward completion, every contradicting report
  is dead-lettered CONFLICTING_FILE_OUTCOME, the batch completes exactly when
  every slot's file has arrived, and nothing is excess. Which outcome a file
  gets is its first report in the arrival order.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from application.commands import (
    AnyCommand,
    ProvisionContent,
    RecordValidationFailure,
    RegisterBatch,
)
from application.service import BatchService
from domain import Batch
from tests.conftest import ManualClock
from tests.strategies import PENDING_TTL_SECONDS, TIMEOUT_SECONDS

BATCH = "b-perm"


@st.composite
def message_sets(draw: st.DrawFn) -> tuple[RegisterBatch, list[ProvisionContent]]:
    slots = draw(st.integers(1, 6))
    registration = RegisterBatch(
        batch_id=BATCH, correlation_id="reg", essay_ids=[f"e{i}" for i in range(slots)]
    )
    distinct = draw(st.integers(0, 9))
    tsids = [f"t{i}" for i in range(distinct)]
    copies = draw(st.lists(st.sampled_from(tsids), max_size=6)) if tsids else []
    files = [
        ProvisionContent(
            batch_id=BATCH,
            correlation_id=f"c-{tsid}-{n}",
            text_storage_id=tsid,
            file_upload_id=f"f-{tsid}",
            original_file_name=f"{tsid}.txt",
        )
        for n, tsid in enumerate([*tsids, *copies])
    ]
    return registration, files


def run(messages: list[AnyCommand]) -> tuple[Counter[str], Counter[str | None]]:
    """Event counts of the batch, and the reasons of rejected messages."""
    clock = ManualClock()
    svc = BatchService(
        env={"PERSISTENCE_MODULE": "eventsourcing.popo"},
        clock=clock,
        timeout_seconds=TIMEOUT_SECONDS,
        pending_ttl_seconds=PENDING_TTL_SECONDS,
    )
    rejected: Counter[str | None] = Counter()
    for message in messages:
        clock.advance(1)
        result = svc.execute([message])[0]
        if result.outcome == "rejected":
            rejected[result.reason] += 1
    events: list[Any] = list(svc.events.get(Batch.create_id(BATCH)))
    svc.close()
    return Counter(type(e).__name__ for e in events), rejected


@given(data=st.data(), messages=message_sets())
def test_any_order_assigns_and_rejects_as_many_as_registration_first(
    data: st.DataObject, messages: tuple[RegisterBatch, list[ProvisionContent]]
) -> None:
    registration, files = messages
    messages_in_order: list[AnyCommand] = [registration, *files]
    baseline, _ = run(messages_in_order)
    shuffled: list[AnyCommand] = data.draw(st.permutations(messages_in_order))
    other, rejected = run(shuffled)
    assert not rejected
    assert other["SlotAssigned"] == baseline["SlotAssigned"]
    assert other["ExcessContentProvisioned"] == baseline["ExcessContentProvisioned"]
    assert other["BatchCompleted"] == baseline["BatchCompleted"]
    # Each distinct file is placed exactly once, whatever the order.
    distinct = len({f.text_storage_id for f in files})
    assert other["SlotAssigned"] + other["ExcessContentProvisioned"] == distinct
    assert other["SlotAssigned"] == min(distinct, len(registration.essay_ids))


Report = ProvisionContent | RecordValidationFailure


@st.composite
def file_reports(draw: st.DrawFn) -> tuple[RegisterBatch, list[Report], int]:
    """A registration, and per file: content, a failure, or both; some repeated,
    some content also under a second storage id. Returns (registration, reports,
    number of files); there are never more files than slots."""
    slots = draw(st.integers(1, 5))
    n_files = draw(st.integers(0, slots))
    reports: list[Report] = []
    for f in range(n_files):
        fuid = f"u{f}"
        kind = draw(st.sampled_from(["content", "failure", "both", "two-contents"]))
        if kind in ("content", "both", "two-contents"):
            reports.append(
                ProvisionContent(
                    batch_id=BATCH,
                    correlation_id=f"c-{fuid}",
                    text_storage_id=f"t-{fuid}",
                    file_upload_id=fuid,
                    original_file_name=f"{fuid}.txt",
                )
            )
        if kind == "two-contents":
            reports.append(
                ProvisionContent(
                    batch_id=BATCH,
                    correlation_id=f"c2-{fuid}",
                    text_storage_id=f"t2-{fuid}",
                    file_upload_id=fuid,
                    original_file_name=f"{fuid}.txt",
                )
            )
        if kind in ("failure", "both"):
            reports.append(
                RecordValidationFailure(
                    batch_id=BATCH,
                    correlation_id=f"f-{fuid}",
                    file_upload_id=fuid,
                    original_file_name=f"{fuid}.txt",
                    error_code="EMPTY_CONTENT",
                )
            )
    repeats = draw(st.lists(st.sampled_from(reports), max_size=4)) if reports else []
    registration = RegisterBatch(
        batch_id=BATCH, correlation_id="reg", essay_ids=[f"e{i}" for i in range(slots)]
    )
    return registration, [*reports, *repeats], n_files


@given(data=st.data(), drawn=file_reports())
def test_any_order_gives_every_file_one_outcome(
    data: st.DataObject, drawn: tuple[RegisterBatch, list[Report], int]
) -> None:
    registration, reports, n_files = drawn
    order: list[AnyCommand] = data.draw(st.permutations([registration, *reports]))
    events, rejected = run(order)
    # The file's outcome is its first report in arrival order (hidden from the service).
    first: dict[str, Report] = {}
    for m in order:
        if isinstance(m, ProvisionContent | RecordValidationFailure):
            first.setdefault(m.file_upload_id, m)
    contents = sum(isinstance(m, ProvisionContent) for m in first.values())
    assert events["SlotAssigned"] == contents
    assert events["ValidationFailureRecorded"] == n_files - contents
    assert events["ExcessContentProvisioned"] == 0
    assert events["BatchCompleted"] == (1 if n_files == len(registration.essay_ids) else 0)
    # Every delivery of another report of the file contradicts its outcome (a
    # repeat of the winning report is a duplicate: a no-op).
    def report(m: Report) -> tuple[str, str | None]:
        return m.file_upload_id, getattr(m, "text_storage_id", None)

    conflicts = sum(report(m) != report(first[m.file_upload_id]) for m in reports)
    expected = Counter({"CONFLICTING_FILE_OUTCOME": conflicts}) if conflicts else Counter()
    assert rejected == expected
