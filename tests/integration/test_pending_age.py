"""batchslot_pending_content_age_seconds: the oldest content still held for a batch never
registered, from one query on the real event store (issue 15 #3)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from application.commands import ExpirePending, ProvisionContent, RegisterBatch
from application.service import BatchService
from infrastructure.bootstrap import Bootstrap
from infrastructure.health.metering import oldest_pending_at, pending_content_age
from infrastructure.settings import Settings
from tests.conftest import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def svc(test_settings: Settings, clock: ManualClock) -> Iterator[BatchService]:
    service = Bootstrap(test_settings).batch_service(clock=clock)
    yield service
    service.close()


def pend(svc: BatchService, batch: str, tsid: str) -> None:
    command = ProvisionContent(
        batch_id=batch,
        correlation_id="c",
        text_storage_id=tsid,
        file_upload_id=f"f-{tsid}",
        original_file_name="a.txt",
    )
    assert svc.execute([command])[0].outcome == "recorded"


def test_the_oldest_pending_content_of_unregistered_batches(
    svc: BatchService, clock: ManualClock
) -> None:
    assert oldest_pending_at(svc) is None and pending_content_age(svc) == 0.0
    start = clock.now
    pend(svc, "a", "a1")  # the oldest, until its batch is registered
    clock.advance(60)
    pend(svc, "b", "b1")  # then this one
    clock.advance(60)
    pend(svc, "a", "a2")
    pend(svc, "c", "c1")
    clock.advance(30)
    assert oldest_pending_at(svc) == start
    assert pending_content_age(svc) == 150.0

    register = RegisterBatch(batch_id="a", correlation_id="c", essay_ids=["e1", "e2"])
    assert svc.execute([register])[0].outcome == "recorded"
    assert oldest_pending_at(svc) == start + timedelta(seconds=60)  # b1
    assert pending_content_age(svc) == 90.0

    clock.advance(svc.pending_ttl_seconds)
    expire = ExpirePending(batch_id="b", correlation_id="c")
    assert svc.execute([expire])[0].outcome == "recorded"
    assert oldest_pending_at(svc) == start + timedelta(seconds=120)  # c1

    expire = ExpirePending(batch_id="c", correlation_id="c")
    assert svc.execute([expire])[0].outcome == "recorded"
    assert oldest_pending_at(svc) is None and pending_content_age(svc) == 0.0
