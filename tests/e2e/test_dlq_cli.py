"""batchctl dlq list / show / redrive and batchctl pending, as an operator runs them
(subprocesses), against the real broker, PostgreSQL and a real worker.

The redrive round trip: a "bug" in the service (the batch service raising for
one batch) makes the worker dead-letter that batch's messages as
PROCESSING_ERROR; after the "fix", ``dlq redrive --reason PROCESSING_ERROR``
sends them back to their source topics, the worker processes them, and the
redrive is recorded; a second redrive is refused, a dry run sends nothing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from aiokafka import TopicPartition

from application.commands import ExpirePending, ProvisionContent
from application.service import BatchService
from infrastructure.bootstrap import Bootstrap
from infrastructure.kafka.clients import ensure_topics, make_consumer
from infrastructure.kafka.local_broker import LocalBroker
from infrastructure.postgres.store import conninfo
from infrastructure.processes.worker import Worker
from infrastructure.settings import Settings
from tests.conftest import drop_redis_prefix, drop_schema
from tests.e2e.conftest import consume, eventually, kafka_settings, produce, running
from tests.e2e.test_cli import batchctl as run_batchctl
from tests.support.scenario import Message, content, envelope, registration


@pytest.fixture
def dlq_settings(broker: LocalBroker) -> Iterator[Settings]:
    s = kafka_settings(broker, PENDING_TTL_SECONDS="86400")
    asyncio.run(ensure_topics(s))
    with Bootstrap(s) as built:  # `batchctl init`: the commands read an initialised store
        built.create_store()
    yield s
    drop_schema(s)
    drop_redis_prefix(s)


def kafka_env(s: Settings) -> dict[str, str]:
    t = s.topics
    return {
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "TOPIC_BATCH_REGISTERED": t.registered,
        "TOPIC_CONTENT_PROVISIONED": t.provisioned,
        "TOPIC_VALIDATION_FAILED": t.failed,
        "TOPIC_BATCH_EVENTS": t.events,
        "TOPIC_DLQ": t.dlq,
        "PENDING_TTL_SECONDS": str(s.pending_ttl_seconds),
    }


def batchctl(s: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return run_batchctl(s, *args, **kafka_env(s))


def ok_json(s: Settings, *args: str) -> Any:
    result = batchctl(s, *args, "--json")
    assert result.returncode == 0, (args, result.stderr)
    return json.loads(result.stdout)


def usage_error(s: Settings, *args: str) -> str:
    result = batchctl(s, *args)
    assert result.returncode == 2, (args, result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


class Bug:
    """The defect to fix: the service fails on every command for one batch."""

    def __init__(self, service: BatchService, batch_id: str) -> None:
        self.active = True
        execute = service.execute

        def buggy(commands: Any, contexts: Any = None) -> Any:
            if self.active and any(c.batch_id == batch_id for c in commands):
                raise RuntimeError(f"bug #123 on {batch_id}")
            return execute(commands, contexts)

        service.execute = buggy  # type: ignore[method-assign]


def end_offsets(s: Settings, topics: list[str]) -> dict[str, int]:
    """Records per topic: the high watermarks of fetch responses (Tansu's ListOffsets
    answers the last batch's base offset + 1, short for a multi-record batch)."""

    async def read() -> dict[str, int]:
        consumer = make_consumer(s, group_id=None, fetch_max_wait_ms=100)
        await consumer.start()
        try:
            await consumer.topics()
            tps = [
                TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()
            ]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while any(consumer.highwater(tp) is None for tp in tps):
                await consumer.getmany(timeout_ms=200)
            return {t: sum(consumer.highwater(tp) for tp in tps if tp.topic == t) for t in topics}
        finally:
            await consumer.stop()

    return asyncio.run(read())


def redrives(s: Settings) -> list[tuple[Any, ...]]:
    with psycopg.connect(**conninfo(s)) as conn:
        exists = conn.execute(
            "SELECT to_regclass(%s)", [f"{s.database_schema}.dlq_redrives"]
        ).fetchone()
        if not exists or exists[0] is None:
            return []
        return conn.execute(
            f'SELECT dlq_partition, dlq_offset, attempt, reason, batch_id, target_topic, '
            f'target_partition, target_offset, sent_at IS NOT NULL '
            f'FROM "{s.database_schema}".dlq_redrives ORDER BY dlq_partition, dlq_offset, attempt'
        ).fetchall()


def is_redriven(record: Any) -> bool:
    return any(k == "dlq.redriven.from" for k, _ in record.headers)


def store_pending(s: Settings) -> datetime:
    """Three never-registered batches: one pended 2 h ago, one just now, one expired."""
    past = datetime.now(UTC) - timedelta(hours=2)
    old = Bootstrap(s).batch_service(clock=lambda: past)
    old.execute(
        [
            ProvisionContent(
                batch_id="early-old",
                correlation_id="c-old",
                text_storage_id="t-old",
                file_upload_id="f-old",
                original_file_name="old.docx",
            )
        ]
    )
    old.close()
    now = Bootstrap(s).batch_service()
    now.execute(
        [
            ProvisionContent(
                batch_id="gone",
                correlation_id="c-gone",
                text_storage_id="t-gone",
                file_upload_id="f-gone",
                original_file_name="gone.docx",
            )
        ]
    )
    now.close()
    later = datetime.now(UTC) + timedelta(seconds=s.pending_ttl_seconds + 5)
    future = Bootstrap(s).batch_service(clock=lambda: later)
    [expired] = future.execute([ExpirePending(batch_id="gone", correlation_id="c-gone")])
    assert expired.outcome == "recorded"
    future.close()
    return past


def test_redrive_round_trip_list_show_pending(dlq_settings: Settings) -> None:
    s = dlq_settings
    past = store_pending(s)
    service = Bootstrap(s).batch_service()
    bug = Bug(service, "poison")
    invalid = Message(
        "registered", "bad", envelope("registered", {"batch_id": "has space", "essay_ids": ["e"]})
    )
    messages = [
        registration("poison", ["e1", "e2"]),
        content("poison", "t1", "f1"),
        invalid,
        registration("fine", ["e1"]),
        content("fine", "t1", "f1"),
        content("early-new", "t-new", "f-new", "new.docx"),  # pending, never registered
    ]

    async def first_run() -> list[Any]:
        async with running(Worker(s, service).run):
            await produce(s, messages)
            dlq = await consume(s, s.topics.dlq, lambda r: len(r) >= 3)
            await eventually(lambda: service.get_batch("early-new") is not None)
            await eventually(lambda: (b := service.get_batch("fine")) is not None and b.is_closed)
        return dlq

    dlq = asyncio.run(first_run())
    assert Counter(dict(r.headers)["dlq.reason"].decode() for r in dlq) == Counter(
        {"PROCESSING_ERROR": 2, "INVALID_DATA": 1}
    )
    assert service.get_batch("poison") is None

    # ---- list
    listing = ok_json(s, "dlq", "list")
    assert listing["topic"] == s.topics.dlq and listing["count"] == 3
    letters = listing["dead_letters"]
    assert Counter(w["reason"] for w in letters) == {"PROCESSING_ERROR": 2, "INVALID_DATA": 1}
    poison = [w for w in letters if w["reason"] == "PROCESSING_ERROR"]
    assert {w["batch_id"] for w in poison} == {"poison"}
    assert {w["source_topic"] for w in poison} == {s.topics.registered, s.topics.provisioned}
    assert all("bug #123" in w["detail"] and w["redrives"] == [] for w in poison)
    assert ok_json(s, "dlq", "list", "--reason", "PROCESSING_ERROR")["count"] == 2
    invalid_only = ok_json(s, "dlq", "list", "--reason", "INVALID_DATA", "--batch", "has space")
    assert invalid_only["count"] == 1 and invalid_only["dead_letters"][0]["key"] == "bad"
    assert ok_json(s, "dlq", "list", "--batch", "poison", "--since", "1h")["count"] == 2
    assert ok_json(s, "dlq", "list", "--since", "2099-01-01T00:00:00Z")["count"] == 0
    table = batchctl(s, "dlq", "list")
    assert table.returncode == 0 and "PROCESSING_ERROR" in table.stdout

    # ---- show
    reg_letter = next(w for w in poison if w["source_topic"] == s.topics.registered)
    shown = ok_json(
        s, "dlq", "show", str(reg_letter["offset"]), "--partition", str(reg_letter["partition"])
    )
    assert shown["value"].encode() == messages[0].value  # the original bytes
    assert shown["envelope"]["data"]["essay_ids"] == ["e1", "e2"]
    assert ["dlq.reason", "PROCESSING_ERROR"] in shown["headers"]
    assert shown["key"] == "poison" and shown["source_offset"] == reg_letter["source_offset"]
    shown_table = batchctl(
        s, "dlq", "show", str(reg_letter["offset"]), "--partition", str(reg_letter["partition"])
    )
    assert shown_table.returncode == 0 and "bug #123" in shown_table.stdout
    dry_table = batchctl(s, "dlq", "redrive", "--reason", "INVALID_DATA", "--dry-run")
    assert dry_table.returncode == 0 and "would send 1 of 1" in dry_table.stdout

    # ---- pending: oldest first, with the expiry time; expired/registered batches absent
    pending = ok_json(s, "pending")
    held = pending["pending"]
    assert [(h["batch_id"], h["text_storage_id"]) for h in held] == [
        ("early-old", "t-old"),
        ("early-new", "t-new"),
    ]
    assert datetime.fromisoformat(held[0]["pended_at"]) == past
    assert datetime.fromisoformat(held[0]["expires_at"]) == past + timedelta(
        seconds=s.pending_ttl_seconds
    )
    assert held[1]["original_file_name"] == "new.docx" and not held[1]["overdue"]
    older = ok_json(s, "pending", "--older-than", "1h")["pending"]
    assert [h["batch_id"] for h in older] == ["early-old"]
    assert "early-old" in batchctl(s, "pending").stdout

    # ---- dry run: nothing sent, nothing recorded
    inbound = list(s.topics.inbound)
    before = end_offsets(s, inbound)
    dry = ok_json(s, "dlq", "redrive", "--reason", "PROCESSING_ERROR", "--dry-run")
    assert dry["dry_run"] and dry["selected"] == 2 and dry["would_send"] == 2
    assert dry["sent"] == 0
    assert end_offsets(s, inbound) == before
    assert redrives(s) == []

    # ---- the fix is deployed; redrive, and the worker processes the letters
    bug.active = False
    sent = ok_json(s, "dlq", "redrive", "--reason", "PROCESSING_ERROR")
    assert sent["sent"] == 2 and {w["status"] for w in sent["letters"]} == {"sent"}
    after = end_offsets(s, inbound)
    assert after[s.topics.registered] == before[s.topics.registered] + 1
    assert after[s.topics.provisioned] == before[s.topics.provisioned] + 1
    rows = redrives(s)
    assert len(rows) == 2 and all(r[2] == 1 and r[3] == "PROCESSING_ERROR" for r in rows)
    assert {r[4] for r in rows} == {"poison"} and all(r[8] for r in rows)
    assert {r[5] for r in rows} == {s.topics.registered, s.topics.provisioned}

    async def second_run() -> list[Any]:
        async with running(Worker(s, service).run):
            await eventually(
                lambda: (b := service.get_batch("poison")) is not None and b.assignments != {}
            )
        return await consume(s, s.topics.provisioned, lambda r: any(map(is_redriven, r)), 10)

    records = asyncio.run(second_run())
    batch = service.get_batch("poison")
    assert batch is not None and batch.essay_ids == ("e1", "e2")
    assert batch.assignments == {"e1": "t1"}
    redriven = [m for m in records if is_redriven(m)]
    assert len(redriven) == 1
    headers = dict(redriven[0].headers)
    assert not any(k.startswith("dlq.") and k != "dlq.redriven.from" for k in headers)
    letter = next(w for w in poison if w["source_topic"] == s.topics.provisioned)
    assert headers["dlq.redriven.from"].decode() == (
        f"{s.topics.dlq}/{letter['partition']}/{letter['offset']}"
    )
    assert redriven[0].value == messages[1].value and redriven[0].key == b"poison"

    # ---- a second redrive is refused; --force sends again as attempt 2
    refused = usage_error(s, "dlq", "redrive", "--reason", "PROCESSING_ERROR")
    assert "already redriven" in refused and "--force" in refused
    assert end_offsets(s, inbound) == after
    listed = ok_json(s, "dlq", "list", "--reason", "PROCESSING_ERROR")["dead_letters"]
    assert all(len(w["redrives"]) == 1 and w["redrives"][0]["sent_at"] for w in listed)
    forced = ok_json(
        s,
        "dlq",
        "redrive",
        "--offset",
        str(letter["offset"]),
        "--partition",
        str(letter["partition"]),
        "--reason",
        "PROCESSING_ERROR",
        "--force",
    )
    assert forced["sent"] == 1 and forced["letters"][0]["attempt"] == 2
    assert len(redrives(s)) == 3
    service.close()


def test_bad_usage_exits_2_with_one_line(dlq_settings: Settings) -> None:
    s = dlq_settings
    assert "--reason, --offset or --batch" in usage_error(s, "dlq", "redrive")
    assert "--offset" in usage_error(s, "dlq", "redrive", "--offset", "9-3")
    usage_error(s, "dlq", "show", "abc")
    assert "no dead letter at offset 999" in usage_error(s, "dlq", "show", "999")
    assert "--since" in usage_error(s, "dlq", "list", "--since", "yesterday")
    assert "--older-than" in usage_error(s, "pending", "--older-than", "5x")
    assert "no partition 99" in usage_error(s, "dlq", "show", "0", "--partition", "99")
    # A broker without the topic (nothing dead-lettered yet): an empty list, exit 0, and
    # one note naming the topic (it may also be a wrong TOPIC_DLQ).
    missing = run_batchctl(
        s, "dlq", "list", "--json", **{**kafka_env(s), "TOPIC_DLQ": "no-such-dlq"}
    )
    assert missing.returncode == 0, missing.stderr
    assert json.loads(missing.stdout)["dead_letters"] == []
    assert "no-such-dlq" in missing.stderr and "TOPIC_DLQ" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    # Nothing dead-lettered and nothing pending: empty results, exit 0.
    assert ok_json(s, "dlq", "list")["dead_letters"] == []
    assert ok_json(s, "pending")["pending"] == []


def test_the_new_commands_have_help_with_examples(test_settings: Settings) -> None:
    top = run_batchctl(test_settings, "--help")
    assert top.returncode == 0 and "dlq" in top.stdout and "pending" in top.stdout
    group = run_batchctl(test_settings, "dlq", "--help")
    assert group.returncode == 0
    assert all(c in group.stdout for c in ("list", "show", "redrive"))
    for args in (["dlq", "list"], ["dlq", "show"], ["dlq", "redrive"], ["pending"]):
        result = run_batchctl(test_settings, *args, "--help")
        assert result.returncode == 0, result
        assert "Usage: batchctl" in result.stdout and "Examples" in result.stdout
