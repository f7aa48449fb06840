"""Order independence: any arrival order of the same messages (one registration,
content with duplicates, no failures) assigns and rejects as many files as the
registration-first order does."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from application.commands import AnyCommand, ProvisionContent, RegisterBatch
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


def run(messages: list[AnyCommand]) -> Counter[str]:
    clock = ManualClock()
    svc = BatchService(
        env={"PERSISTENCE_MODULE": "eventsourcing.popo"},
        clock=clock,
        timeout_seconds=TIMEOUT_SECONDS,
        pending_ttl_seconds=PENDING_TTL_SECONDS,
    )
    for message in messages:
        clock.advance(1)
        result = svc.execute([message])[0]
        assert result.outcome != "rejected", result
    events: list[Any] = list(svc.events.get(Batch.create_id(BATCH)))
    svc.close()
    return Counter(type(e).__name__ for e in events)


@given(data=st.data(), messages=message_sets())
def test_any_order_assigns_and_rejects_as_many_as_registration_first(
    data: st.DataObject, messages: tuple[RegisterBatch, list[ProvisionContent]]
) -> None:
    registration, files = messages
    messages_in_order: list[AnyCommand] = [registration, *files]
    baseline = run(messages_in_order)
    shuffled: list[AnyCommand] = data.draw(st.permutations(messages_in_order))
    other = run(shuffled)
    assert other["SlotAssigned"] == baseline["SlotAssigned"]
    assert other["ExcessContentProvisioned"] == baseline["ExcessContentProvisioned"]
    assert other["BatchCompleted"] == baseline["BatchCompleted"]
    # Each distinct file is placed exactly once, whatever the order.
    distinct = len({f.text_storage_id for f in files})
    assert other["SlotAssigned"] + other["ExcessContentProvisioned"] == distinct
    assert other["SlotAssigned"] == min(distinct, len(registration.essay_ids))
