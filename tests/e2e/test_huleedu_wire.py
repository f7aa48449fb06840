"""HuleEdu's wire end to end: their real messages through the broker into ``batchctl run``.

The records are the committed fixtures made by HuleEdu's own models, sent as
HuleEdu's producers send them: no Kafka headers, File Service records keyed by
``file_upload_id`` (so one batch's files land on different partitions), a
relay re-publish with a new ``event_id``, content before registration,
validation failures, excess, and a batch that times out. With
``WIRE_PROFILE=huleedu`` nothing valid is dead-lettered and every record on
HuleEdu's outbound topics validates against HuleEdu's own models: exactly one
completion per batch (the timed-out one too), one slot assignment per
assigned content, one excess event per excess file, the trace id carried
through ``metadata``.

Which content fills which slot depends on the order the worker reads
partitions in (as with HuleEdu's real keys), so the checks are those that
hold in every order.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infrastructure.kafka.clients import ensure_topics, make_producer
from infrastructure.kafka.local_broker import LocalBroker
from infrastructure.settings import Settings
from tests.conftest import drop_redis_prefix, drop_schema
from tests.e2e.conftest import consume, kafka_settings, service_env
from tests.huleedu_wire import expected, scenario, validate_outbound
from tests.support.scratch import new_tag

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_SECONDS = 8  # batch D times out this long after its registration


@pytest.fixture
def huleedu_settings(broker: LocalBroker) -> Iterator[Settings]:
    tag = new_tag(8)
    s = kafka_settings(
        broker,
        WIRE_PROFILE="huleedu",
        TOPIC_HULEEDU_COMPLETED=f"hu-completed-{tag}",
        TOPIC_HULEEDU_SLOT_ASSIGNED=f"hu-slot-{tag}",
        TOPIC_HULEEDU_EXCESS=f"hu-excess-{tag}",
        KAFKA_TOPIC_PARTITIONS="3",
    )
    asyncio.run(ensure_topics(s))
    yield s
    drop_schema(s)
    drop_redis_prefix(s)


def start_run(s: Settings) -> subprocess.Popen[bytes]:
    hu = s.topics.huleedu
    env = service_env(
        s,
        WIRE_PROFILE="huleedu",
        TOPIC_HULEEDU_COMPLETED=hu.completed,
        TOPIC_HULEEDU_SLOT_ASSIGNED=hu.slot_assigned,
        TOPIC_HULEEDU_EXCESS=hu.excess,
        BATCH_TIMEOUT_SECONDS=str(TIMEOUT_SECONDS),
        SWEEP_INTERVAL_SECONDS="0.5",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "infrastructure.cli.main", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def send_as_huleedu(s: Settings) -> None:
    """Every fixture record, in order, as HuleEdu sends it: its key, no headers."""
    producer = make_producer(s)
    await producer.start()
    try:
        for record in scenario():
            topic = s.topics.by_kind[record.kind]
            await (await producer.send(topic, value=record.value, key=record.key))
            await asyncio.sleep(0.05)
    finally:
        await producer.stop()


def trace_id(envelope: dict[str, Any]) -> str | None:
    traceparent = (envelope.get("metadata") or {}).get("traceparent")
    return traceparent.split("-")[1] if traceparent else None


@pytest.mark.slow
def test_huleedus_own_messages_complete_every_batch(huleedu_settings: Settings) -> None:
    s, hu = huleedu_settings, huleedu_settings.topics.huleedu
    want = expected()
    label_of = {b["batch_id"]: label for label, b in want.items()}
    process = start_run(s)
    try:
        asyncio.run(send_as_huleedu(s))
        completions = asyncio.run(
            consume(s, hu.completed, lambda rs: len(rs) >= len(want), timeout=60)
        )
        assert len(completions) == len(want), "a batch was never announced to BOS"
        n_assigned = sum(b["assigned"] for b in want.values())
        n_excess = sum(len(b["excess"]) for b in want.values())
        slots = asyncio.run(consume(s, hu.slot_assigned, lambda rs: len(rs) > n_assigned, 3))
        excess = asyncio.run(consume(s, hu.excess, lambda rs: len(rs) > n_excess, 3))
        dead = asyncio.run(consume(s, s.topics.dlq, lambda rs: len(rs) > 0, 2))
        native = asyncio.run(consume(s, s.topics.events, lambda rs: False, 3))
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()[-2000:]

    assert dead == [], "a valid HuleEdu message was dead-lettered"
    # Exactly once each (no faults here: at least once is exactly once), all valid.
    announced = [
        validate_outbound("BatchContentProvisioningCompletedV1", r.value) for r in completions
    ]
    assigned = [validate_outbound("EssaySlotAssignedV1", r.value) for r in slots]
    spilled = [validate_outbound("ExcessContentProvisionedV1", r.value) for r in excess]
    assert len(assigned) == n_assigned and len(spilled) == n_excess
    assert Counter(e["data"]["batch_id"] for e in announced) == Counter(set(label_of))
    assert all(r.key == json.loads(r.value)["data"]["batch_id"].encode() for r in completions)
    assert all(r.headers == () or r.headers for r in completions)  # ours may carry headers

    inbound_traces: dict[str, set[str]] = defaultdict(set)
    sent_tsids: dict[str, set[str]] = defaultdict(set)
    for record in scenario():
        data = record.envelope["data"]
        if trace_id(record.envelope):
            inbound_traces[data["entity_id"]].add(str(trace_id(record.envelope)))
        if record.kind == "provisioned":
            sent_tsids[data["entity_id"]].add(data["text_storage_id"])

    by_batch: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in assigned:
        by_batch[e["data"]["batch_id"]].append(e["data"])
    for envelope in announced:
        data = envelope["data"]
        batch = want[label_of[data["batch_id"]]]
        # What BOS reads: the registration's correlation id, owner and slots.
        assert envelope["correlation_id"] == data["correlation_id"]
        assert data["correlation_id"] == batch["registration_correlation_id"]
        assert (data["course_code"], data["user_id"]) == (batch["course_code"], batch["user_id"])
        assert data["expected_count"] == len(batch["essay_ids"])
        ready = data["essays_for_processing"]
        assert data["provisioned_count"] == len(ready) == batch["assigned"]
        # Every ready essay is one the batch's slot events announced, slots in order.
        slot_events = by_batch[data["batch_id"]]
        assert {(r["essay_id"], r["text_storage_id"]) for r in ready} == {
            (d["essay_id"], d["text_storage_id"]) for d in slot_events
        }
        assert [r["essay_id"] for r in ready] == batch["essay_ids"][: len(ready)]
        assert {r["text_storage_id"] for r in ready} <= sent_tsids[data["batch_id"]]
        if trace_id(envelope):
            assert trace_id(envelope) in inbound_traces[data["batch_id"]]
    timed_out = [e for e in announced if e["data"]["batch_id"] == want["D"]["batch_id"]]
    assert timed_out[0]["data"]["provisioned_count"] < timed_out[0]["data"]["expected_count"]

    # Excess: never a content that also filled a slot, and the batch's own.
    filled = {d["text_storage_id"] for ds in by_batch.values() for d in ds}
    assert all(e["data"]["text_storage_id"] not in filled for e in spilled)
    assert {e["data"]["reason"] for e in spilled} <= {"NO_AVAILABLE_SLOT", "BATCH_CLOSED"}
    # The trace id travels through metadata: some slot assignments carry one, each
    # from a message of its own batch.
    traced = [e for e in assigned if trace_id(e)]
    assert traced
    assert all(trace_id(e) in inbound_traces[e["data"]["batch_id"]] for e in traced)
    # batch.events.v1 still carries every event: one completion per batch there too.
    native_done = [json.loads(r.value) for r in native]
    assert Counter(
        e["data"]["batch_id"] for e in native_done if e["event_type"] == "BatchCompleted"
    ) == Counter(set(label_of))
