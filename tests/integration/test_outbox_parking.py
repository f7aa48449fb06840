"""A refused publication never holds back other batches (CONTRACT §3), real broker.

An event the producer's ``max_request_size`` (or the broker) refuses is
parked with every later event of its batch; the events of other batches
stored after it are published; the parked ones are counted, logged and
retried, and go out in order once the limit allows them.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY

from application.commands import (
    ProvisionContent,
    RecordValidationFailure,
    RegisterBatch,
)
from application.service import BatchService
from domain import Batch
from infrastructure.settings import Settings
from projections.envelope import envelope_of
from tests.integration.test_outbox import (
    busy_workload,
    check_delivery,
    consume,
    env,  # noqa: F401 - the fixture
    running,
    stored,
    until,
)
from tests.support.followers import outbox_of

MIB = 1024 * 1024


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def provision(batch_id: str, n: int, name: str = "a.txt") -> ProvisionContent:
    return ProvisionContent(
        batch_id=batch_id,
        correlation_id=f"c{n}",
        text_storage_id=f"t{n}",
        file_upload_id=f"f{n}",
        original_file_name=name,
    )


def test_refused_event_is_parked_and_other_batches_flow(
    env: tuple[Settings, BatchService],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    s, service = env
    big_ids = [f"{i:04d}" + "e" * 124 for i in range(200)]  # ~27 kB envelope
    service.execute([RegisterBatch(batch_id="big", correlation_id="c", essay_ids=big_ids)])
    service.execute([provision("big", 0)])  # a later event of the same batch
    busy_workload(service, batches=3, files=3)  # other batches, stored after it
    others = [e for e in stored(service) if e.batch_id != "big"]
    refused_before = sample("batchslot_outbox_refused_total", error="MessageSizeTooLargeError")
    outbox = outbox_of(
        s,
        service,
        backoff=(0.02, 0.1),
        refusal_attempts=2,
        parked_retry_seconds=3600,
        producer_overrides={"max_request_size": 10_000},
    )

    async def body() -> None:
        await until(lambda: outbox.lag() == 0)

    asyncio.run(running(outbox, body))

    big_events = [e for e in stored(service) if e.batch_id == "big"]
    parked = outbox.parking.parked()
    assert [p.event_id for p in parked] == [
        envelope_of(e, s.source_service).event_id for e in big_events
    ]
    assert parked[0].reason.startswith("MessageSizeTooLargeError")
    assert "held behind" in parked[1].reason
    assert sample("batchslot_outbox_parked_events") == 2
    assert (
        sample("batchslot_outbox_refused_total", error="MessageSizeTooLargeError") > refused_before
    )
    assert any("big" in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)
    records = asyncio.run(consume(s, len(others)))
    published = {json.loads(r.value)["event_id"] for r in records}
    assert published == {envelope_of(e, s.source_service).event_id for e in others}

    # While the batch is parked, its new events wait behind the parked ones.
    service.execute([provision("big", 1)])
    service.execute([provision("b0", 99)])

    async def more() -> None:
        while await outbox.publish_once():
            pass
        assert await outbox.retry_parked() == 0  # the limit is unchanged: still refused
        await outbox.close()

    asyncio.run(more())
    assert len(outbox.parking.parked()) == 3
    assert outbox.parking.parked()[0].attempts > parked[0].attempts
    assert outbox.lag() == 0

    # The limit is raised (a new outbox with the default producer limit): published in order.
    raised = outbox_of(s, service)

    async def retry() -> None:
        assert await raised.retry_parked() == 3
        await raised.close()

    asyncio.run(retry())
    assert raised.parking.count() == 0
    assert sample("batchslot_outbox_parked_events") == 0
    total = len(stored(service))
    check_delivery(service, s, asyncio.run(consume(s, total)))  # per batch in stream order


def worst_case_service(service: BatchService) -> None:
    """Every event type but BatchCompleted at its largest (CONTRACT §3 identifiers)."""
    ident = "x" * 124
    cid = '"\\' * 64  # 128 characters, every one escaped in JSON
    name = "\U0001f600" * 255  # 255 characters of 4 bytes each
    control = "\x01" * 255  # 255 characters, each escaped as \u0001
    slots = [f"{i:04d}{ident}" for i in range(5000)]
    service.execute(
        [
            provision("wc-pended", 0, name),  # ContentPended
            RegisterBatch(batch_id="w" * 128, correlation_id=cid, essay_ids=slots),
        ]
    )
    service.execute(
        [
            ProvisionContent(
                batch_id="w" * 128,
                correlation_id=cid,
                text_storage_id="t" * 128,
                file_upload_id="f" * 128,
                original_file_name=control,
            ),  # SlotAssigned
            RecordValidationFailure(
                batch_id="w" * 128,
                correlation_id=cid,
                file_upload_id="g" * 128,
                original_file_name=control,
                error_code="E" * 128,
            ),  # ValidationFailureRecorded
        ]
    )
    service.execute([RegisterBatch(batch_id="one", correlation_id="c", essay_ids=["e"])])
    service.execute([provision("one", 1, control), provision("one", 2, control)])  # excess


def test_worst_case_envelopes_fit_the_real_1_mib_limit(
    env: tuple[Settings, BatchService],  # noqa: F811
) -> None:
    s, service = env
    worst_case_service(service)
    events = stored(service)
    assert {type(e).__name__ for e in events} >= {
        "BatchRegistered",
        "ContentPended",
        "SlotAssigned",
        "ValidationFailureRecorded",
        "ExcessContentProvisioned",
    }
    outbox = outbox_of(s, service, refusal_attempts=1, producer_overrides={"max_request_size": MIB})

    async def publish() -> None:
        while await outbox.publish_once():
            pass
        await outbox.close()

    asyncio.run(publish())
    assert outbox.parking.count() == 0
    check_delivery(service, s, asyncio.run(consume(s, len(events))))


def test_worst_case_pending_content_expired_fits_1_mib() -> None:
    """Pending content is unbounded: its release comes in parts (domain/batch.py)."""
    batch = Batch.start("p" * 128, datetime(2026, 1, 1, tzinfo=UTC))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(10_000):
        batch.provision_content(f"{i:05d}" + "t" * 123, f"f{i}", "a.txt", now, "c")
    batch.expire_pending(datetime(2026, 1, 3, tzinfo=UTC), 86400, "c")
    expired = [e for e in batch.collect_events() if type(e).__name__ == "PendingContentExpired"]
    assert expired
    for e in expired:
        assert len(envelope_of(e, "batch-slot-service").value) <= MIB


def test_worst_case_completion_goes_out_in_parts_at_the_real_1_mib_limit(
    env: tuple[Settings, BatchService],  # noqa: F811
) -> None:
    """5,000 slots of 128-character ids, completed: CONTRACT §3 completion parts,
    through the outbox with the producer limited to 1 MiB, nothing parked."""
    s, service = env
    ident = "x" * 123
    slots = [f"{i:04d}e{ident}" for i in range(5000)]
    batch_id = "c" * 128
    service.execute([RegisterBatch(batch_id=batch_id, correlation_id="c", essay_ids=slots)])
    files = [
        ProvisionContent(
            batch_id=batch_id,
            correlation_id="c",
            text_storage_id=f"{i:04d}t{ident}",
            file_upload_id=f"{i:04d}f{ident}",
            original_file_name="a.txt",
        )
        for i in range(5000)
    ]
    for start in range(0, 5000, 1000):
        service.execute(files[start : start + 1000])
    events = stored(service)
    outbox = outbox_of(s, service, refusal_attempts=1, producer_overrides={"max_request_size": MIB})

    async def publish() -> None:
        while await outbox.publish_once():
            pass
        await outbox.close()

    asyncio.run(publish())
    assert outbox.parking.count() == 0
    records = asyncio.run(consume(s, len(events)))
    check_delivery(service, s, records)
    parts = [
        json.loads(r.value)
        for r in records
        if json.loads(r.value)["event_type"] == "BatchCompleted"
    ]
    assert len(parts) >= 2 and all(len(r.value) <= MIB for r in records)
    assert [(p["data"]["part"], p["data"]["parts"]) for p in parts] == [
        (n, len(parts)) for n in range(1, len(parts) + 1)
    ]
    ready = [item["essay_id"] for p in parts for item in p["data"]["ready"]]
    assert ready == slots
