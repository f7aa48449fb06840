"""The outbox in the HuleEdu profile, on the real broker and PostgreSQL (CONTRACT §7).

Every stored event still goes to ``batch.events.v1``; HuleEdu's three events go
to their topics, in stream order per batch, once each, valid for HuleEdu's own
models; a republish (a new outbox from the recorded position, or from the
start) repeats the same ``event_id`` and byte-identical ``data``; and a HuleEdu
record the producer refuses parks its event without holding back other batches.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from application.commands import ProvisionContent, RegisterBatch
from application.service import BatchService
from infrastructure.bootstrap import Bootstrap
from infrastructure.kafka.clients import make_consumer
from infrastructure.kafka.local_broker import LocalBroker
from infrastructure.processes.outbox import Outbox
from infrastructure.settings import Settings
from tests.conftest import ManualClock, drop_schema, make_settings
from tests.huleedu_wire import validate_outbound
from tests.integration.test_outbox import running, stored, until
from tests.support.followers import outbox_of
from tests.support.scratch import new_tag, topic_env

COMPLETED = "BatchContentProvisioningCompletedV1"
SLOT = "EssaySlotAssignedV1"
EXCESS = "ExcessContentProvisionedV1"


@pytest.fixture
def env(broker: LocalBroker) -> Iterator[tuple[Settings, BatchService]]:
    tag = new_tag(8)
    s = make_settings(
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        **topic_env(tag, sep="."),
        WIRE_PROFILE="huleedu",
        TOPIC_HULEEDU_COMPLETED=f"hu.completed.{tag}",
        TOPIC_HULEEDU_SLOT_ASSIGNED=f"hu.slot.{tag}",
        TOPIC_HULEEDU_EXCESS=f"hu.excess.{tag}",
    )
    svc = Bootstrap(s).batch_service(clock=ManualClock())
    yield s, svc
    svc.close()
    drop_schema(s)


def register(batch_id: str, slots: int, **owner: str) -> RegisterBatch:
    return RegisterBatch(
        batch_id=batch_id,
        correlation_id="5b1e8d2a-1c4f-4e7a-9d3b-2a6c8e0f1b47",
        essay_ids=[f"{batch_id}-e{i}".ljust(60, "x") for i in range(slots)],
        **({"course_code": "ENG5", "user_id": "u-1"} | owner),
    )


def content(batch_id: str, n: int) -> ProvisionContent:
    return ProvisionContent(
        batch_id=batch_id,
        correlation_id="9a7c3e1f-0b2d-4f6a-8c5e-3d1b7f9a2c60",
        text_storage_id=f"{batch_id}-t{n}".ljust(60, "y"),
        file_upload_id=f"{batch_id}-f{n}",
        original_file_name="essay.docx",
    )


def workload(service: BatchService, batches: dict[str, int], extra: int = 1) -> None:
    """Each batch: registered, filled, then ``extra`` contents more (excess)."""
    for batch_id, slots in batches.items():
        service.execute([register(batch_id, slots)])
        service.execute([content(batch_id, n) for n in range(slots + extra)])


async def read_all(s: Settings, topics: tuple[str, ...], settle: float = 1.5) -> list[Any]:
    """Every record of ``topics`` from the beginning, until nothing new for ``settle`` s."""
    consumer = make_consumer(s, *topics, group_id=None)
    await consumer.start()
    records: list[Any] = []
    loop = asyncio.get_running_loop()
    quiet_until = loop.time() + settle
    try:
        while loop.time() < quiet_until:
            got = await consumer.getmany(timeout_ms=200)
            for part in got.values():
                records.extend(part)
                quiet_until = loop.time() + settle
    finally:
        await consumer.stop()
    return records


def by_topic(s: Settings, records: list[Any]) -> dict[str, list[dict[str, Any]]]:
    hu = s.topics.huleedu
    model = {hu.completed: COMPLETED, hu.slot_assigned: SLOT, hu.excess: EXCESS}
    out: dict[str, list[dict[str, Any]]] = {COMPLETED: [], SLOT: [], EXCESS: []}
    for r in records:
        out[model[r.topic]].append(validate_outbound(model[r.topic], r.value))
    return out


def publish_all(outbox: Outbox) -> None:
    async def body() -> None:
        await until(lambda: outbox.lag() == 0)

    asyncio.run(running(outbox, body))


def test_huleedus_events_go_out_once_each_in_order_and_republish_identically(
    env: tuple[Settings, BatchService],
) -> None:
    s, service = env
    workload(service, {"b1": 3, "b2": 2, "b3": 4})
    publish_all(outbox_of(s, service))
    hu = s.topics.huleedu
    first = by_topic(s, asyncio.run(read_all(s, hu.all)))
    assert Counter(e["data"]["batch_id"] for e in first[COMPLETED]) == {"b1": 1, "b2": 1, "b3": 1}
    assert len(first[SLOT]) == 9 and len(first[EXCESS]) == 3
    for batch_id, slots in {"b1": 3, "b2": 2, "b3": 4}.items():
        # Stream order per batch on each topic: slots in registration order.
        essays = [e["data"]["essay_id"] for e in first[SLOT] if e["data"]["batch_id"] == batch_id]
        assert essays == [f"{batch_id}-e{i}".ljust(60, "x") for i in range(slots)]
    native = asyncio.run(read_all(s, (s.topics.events,)))
    assert len(native) == len(stored(service))  # every stored event, as in the native profile

    # A republish from the start (a new outbox, its position reset) repeats each record
    # exactly: same event_id, byte-identical data.
    with service.recorder.datastore.transaction(commit=True) as curs:
        curs.execute(f"DELETE FROM {s.database_schema}.outbox_tracking")
    publish_all(outbox_of(s, service))
    again = by_topic(s, asyncio.run(read_all(s, hu.all)))
    for name in (COMPLETED, SLOT, EXCESS):
        ids = Counter(e["event_id"] for e in again[name])
        assert set(ids.values()) == {2}, name  # each record twice, nothing new
        data = {}
        for e in again[name]:
            text = json.dumps(e["data"], sort_keys=True)
            assert data.setdefault(e["event_id"], text) == text


def test_a_refused_completion_is_parked_and_other_batches_flow(
    env: tuple[Settings, BatchService],
) -> None:
    s, service = env
    # 150 ready essays of 60-character ids: the completion's records (native and
    # HuleEdu's) are about 24 kB, its registration about 10 kB, every other record
    # under 1 kB.
    workload(service, {"big": 150}, extra=0)
    workload(service, {"small": 2})
    limit = 15_000
    capped = outbox_of(
        s,
        service,
        backoff=(0.02, 0.1),
        refusal_attempts=2,
        parked_retry_seconds=3600,
        producer_overrides={"max_request_size": limit},
    )
    publish_all(capped)
    parked = capped.parking.parked()
    assert [(p.batch_id, p.event_type) for p in parked] == [("big", "BatchCompleted")]
    hu = s.topics.huleedu
    out = by_topic(s, asyncio.run(read_all(s, hu.all)))
    # The small batch is announced although the big one's completion is refused; the
    # big one's slot assignments (before its completion) went out.
    # (The page was retried before its refused record was isolated: at least once, the
    # same event_id each time.)
    assert {(e["data"]["batch_id"], e["event_id"]) for e in out[COMPLETED]} == {
        ("small", out[COMPLETED][0]["event_id"])
    }
    assert len({e["event_id"] for e in out[SLOT] if e["data"]["batch_id"] == "big"}) == 150

    raised = outbox_of(s, service)  # the limit raised: the parked event goes out, every record

    async def retry() -> None:
        assert await raised.retry_parked() == 1
        await raised.close()

    asyncio.run(retry())
    out = by_topic(s, asyncio.run(read_all(s, hu.all)))
    announced = {e["data"]["batch_id"]: e["data"] for e in out[COMPLETED]}
    assert set(announced) == {"big", "small"}
    assert announced["big"]["provisioned_count"] == 150 == announced["big"]["expected_count"]
