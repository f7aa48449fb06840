"""batchslot_pending_content_age_seconds: the oldest content still held for a batch never
registered, read from the due-batch index that a follower keeps beside the real event
store, not from a scan of the events table."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from application.commands import ExpirePending, ProvisionContent, RegisterBatch
from application.service import BatchService
from infrastructure.bootstrap import Bootstrap
from infrastructure.health.metering import pending_content_age
from infrastructure.settings import Settings
from tests.conftest import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def container(test_settings: Settings, clock: ManualClock) -> Iterator[Bootstrap]:
    with Bootstrap(test_settings, clock=clock) as built:
        yield built


def age(container: Bootstrap) -> float:
    """The gauge's value once the due-index follower has applied every stored event."""
    service, index = container.service, container.due_index
    follower = container.due_follower()
    page = service.recorder.select_notifications(start=index.position() + 1, limit=10_000)
    if page:
        follower.apply(page, index.position())
    return pending_content_age(index, service.clock())


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
    container: Bootstrap, clock: ManualClock
) -> None:
    svc = container.service
    assert age(container) == 0.0
    pend(svc, "a", "a1")  # the oldest, until its batch is registered
    clock.advance(60)
    pend(svc, "b", "b1")  # then this one
    clock.advance(60)
    pend(svc, "a", "a2")
    pend(svc, "c", "c1")
    clock.advance(30)
    assert age(container) == 150.0  # a1

    register = RegisterBatch(batch_id="a", correlation_id="c", essay_ids=["e1", "e2"])
    assert svc.execute([register])[0].outcome == "recorded"
    assert age(container) == 90.0  # b1

    clock.advance(svc.pending_ttl_seconds)
    expire = ExpirePending(batch_id="b", correlation_id="c")
    assert svc.execute([expire])[0].outcome == "recorded"
    assert age(container) == 150.0 + svc.pending_ttl_seconds - 120  # c1

    expire = ExpirePending(batch_id="c", correlation_id="c")
    assert svc.execute([expire])[0].outcome == "recorded"
    assert age(container) == 0.0
