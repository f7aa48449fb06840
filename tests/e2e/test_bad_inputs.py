"""Bad-input corpus: every kind of bad message, interleaved with valid traffic,
through a real running worker and the real broker.

Each invalid message must land in the DLQ with the right ``dlq.reason`` and its
original bytes; the worker must stay alive; every valid message (including
strange but valid file names, stored verbatim) must be in the event store.

Over-1 MiB messages: the project's producer (``infrastructure.kafka.clients``) already
allows requests of 2 MiB and the worker's DLQ producer 16 MiB; Tansu accepts
them with its defaults and the consumer's fetch returns an oversize first
batch, so no topic or producer setting had to change for the 1 MiB + 1 KiB case.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from prometheus_client import REGISTRY

from application.commands import ExpirePending, ProvisionContent
from application.messages import MAX_MESSAGE_BYTES
from application.service import BatchService
from domain import Batch
from infrastructure.bootstrap import Bootstrap
from infrastructure.kafka.clients import make_producer
from infrastructure.processes.worker import Worker
from infrastructure.settings import Settings
from tests.e2e.conftest import consume, eventually, running
from tests.support.scenario import EVENT_TYPES, Kind

GOOD = "good-batch"
GOOD_SLOTS = 80


def env(kind: Kind, data: Any, *, drop: tuple[str, ...] = (), **override: Any) -> bytes:
    """An envelope for ``kind`` with fields overridden or dropped."""
    document: dict[str, Any] = {
        "event_id": str(uuid4()),
        "event_type": EVENT_TYPES[kind],
        "event_timestamp": datetime.now(UTC).isoformat(),
        "source_service": "bad-input-corpus",
        "correlation_id": str(uuid4()),
        "schema_version": 1,
        "data": data,
    }
    document.update(override)
    for name in drop:
        document.pop(name)
    return json.dumps(document).encode()


def content_data(batch_id: str = "bad-target", **extra: Any) -> dict[str, Any]:
    return {
        "batch_id": batch_id,
        "text_storage_id": "t-bad",
        "file_upload_id": "f-bad",
        "original_file_name": "essay.docx",
        **extra,
    }


def reg_data(batch_id: str = "bad-reg", essay_ids: Any = None, **extra: Any) -> dict[str, Any]:
    ids = ["e1", "e2"] if essay_ids is None else essay_ids
    return {"batch_id": batch_id, "essay_ids": ids, **extra}


def failure_data(**extra: Any) -> dict[str, Any]:
    return {
        "batch_id": "bad-target",
        "file_upload_id": "f-bad",
        "original_file_name": "broken.pdf",
        "error_code": "EMPTY_CONTENT",
        **extra,
    }


@dataclass(frozen=True)
class Case:
    name: str
    kind: Kind
    value: bytes | None
    reason: str  # the expected dlq.reason


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def corpus() -> list[Case]:
    big_name = "x" * (MAX_MESSAGE_BYTES + 1024)
    deep = env("provisioned", content_data())
    deep = deep.replace(b'"data": {', b'"data": {"nest": ' + nested(5000) + b", ", 1)
    cases = [
        Case("invalid-json", "provisioned", b'{"event_id": "x", ', "INVALID_JSON"),
        Case("not-json-at-all", "registered", b"hello, world", "INVALID_JSON"),
        Case("invalid-utf8", "provisioned", b'{"event_id": "\xff\xfe"}', "INVALID_UTF8"),
        Case(
            "latin1-file-name",
            "provisioned",
            env("provisioned", content_data()).replace(b"essay.docx", b"ess\xe9.docx"),
            "INVALID_UTF8",
        ),
        Case(
            "utf8-bom",
            "provisioned",
            b"\xef\xbb\xbf" + env("provisioned", content_data()),
            "INVALID_JSON",
        ),
        Case(
            "lone-surrogate",
            "provisioned",
            env("provisioned", content_data(original_file_name="\ud800")),
            "INVALID_JSON",
        ),
        Case(
            "over-1-MiB",
            "provisioned",
            env("provisioned", content_data(original_file_name=big_name)),
            "MESSAGE_TOO_LARGE",
        ),
        Case("empty-value", "registered", b"", "EMPTY_MESSAGE"),
        Case("tombstone", "failed", None, "EMPTY_MESSAGE"),
        Case("json-array", "registered", b"[1, 2, 3]", "INVALID_ENVELOPE"),
        Case("json-null", "registered", b"null", "INVALID_ENVELOPE"),
        Case(
            "missing-event-id",
            "provisioned",
            env("provisioned", content_data(), drop=("event_id",)),
            "INVALID_ENVELOPE",
        ),
        Case(
            "missing-data",
            "provisioned",
            env("provisioned", content_data(), drop=("data",)),
            "INVALID_ENVELOPE",
        ),
        Case(
            "missing-data-field",
            "provisioned",
            env(
                "provisioned",
                {"batch_id": "bad-target", "file_upload_id": "f", "original_file_name": "a"},
            ),
            "INVALID_DATA",
        ),
        Case("null-data", "provisioned", env("provisioned", None), "INVALID_ENVELOPE"),
        Case("list-data", "provisioned", env("provisioned", [content_data()]), "INVALID_ENVELOPE"),
        Case(
            "essay-ids-a-string",
            "registered",
            env("registered", reg_data(essay_ids="e1,e2")),
            "INVALID_DATA",
        ),
        Case(
            "batch-id-a-number",
            "provisioned",
            env("provisioned", content_data(batch_id=12345)),
            "INVALID_DATA",
        ),
        Case(
            "schema-version-string",
            "provisioned",
            env("provisioned", content_data(), schema_version="1"),
            "INVALID_ENVELOPE",
        ),
        Case(
            "schema-version-bool",
            "provisioned",
            env("provisioned", content_data(), schema_version=True),
            "INVALID_ENVELOPE",
        ),
        Case(
            "timestamp-unix-number",
            "provisioned",
            env("provisioned", content_data(), event_timestamp=1767225600),
            "INVALID_ENVELOPE",
        ),
        Case(
            "expected-count-float",
            "registered",
            env("registered", reg_data(expected_essay_count=2.0)),
            "INVALID_DATA",
        ),
        Case(
            "unknown-event-type",
            "provisioned",
            env("provisioned", content_data(), event_type="BatchExploded"),
            "UNEXPECTED_EVENT_TYPE",
        ),
        Case(
            "wrong-event-type-for-topic",
            "registered",
            env("provisioned", content_data()),
            "UNEXPECTED_EVENT_TYPE",
        ),
        Case(
            "schema-version-2",
            "provisioned",
            env("provisioned", content_data(), schema_version=2),
            "UNSUPPORTED_SCHEMA_VERSION",
        ),
        Case(
            "batch-id-braces",
            "provisioned",
            env("provisioned", content_data(batch_id="x}:summary{y")),
            "INVALID_DATA",
        ),
        Case(
            "batch-id-newline",
            "provisioned",
            env("provisioned", content_data(batch_id="a\r\nFLUSHALL\r\n")),
            "INVALID_DATA",
        ),
        Case(
            "batch-id-space",
            "provisioned",
            env("provisioned", content_data(batch_id="a b")),
            "INVALID_DATA",
        ),
        Case(
            "batch-id-glob",
            "provisioned",
            env("provisioned", content_data(batch_id="batch*")),
            "INVALID_DATA",
        ),
        Case(
            "batch-id-129-chars",
            "provisioned",
            env("provisioned", content_data(batch_id="b" * 129)),
            "INVALID_DATA",
        ),
        Case(
            "batch-id-empty",
            "provisioned",
            env("provisioned", content_data(batch_id="")),
            "INVALID_DATA",
        ),
        Case(
            "essay-id-braces",
            "registered",
            env("registered", reg_data(essay_ids=["e1", "{e2}"])),
            "INVALID_DATA",
        ),
        Case(
            "text-storage-id-newline",
            "provisioned",
            env("provisioned", content_data(text_storage_id="t\n1")),
            "INVALID_DATA",
        ),
        Case(
            "5001-slots",
            "registered",
            env("registered", reg_data(essay_ids=[f"e{i}" for i in range(5001)])),
            "INVALID_DATA",
        ),
        Case("no-slots", "registered", env("registered", reg_data(essay_ids=[])), "INVALID_DATA"),
        Case(
            "duplicate-essay-ids",
            "registered",
            env("registered", reg_data(essay_ids=["e1", "e2", "e1"])),
            "INVALID_DATA",
        ),
        Case(
            "mismatched-expected-count",
            "registered",
            env("registered", reg_data(expected_essay_count=3)),
            "INVALID_DATA",
        ),
        Case(
            "huge-file-size",
            "provisioned",
            env("provisioned", content_data(file_size_bytes=10**30)),
            "INVALID_DATA",
        ),
        Case(
            "negative-file-size",
            "provisioned",
            env("provisioned", content_data(file_size_bytes=-1)),
            "INVALID_DATA",
        ),
        Case(
            "huge-expected-count",
            "registered",
            env("registered", reg_data(expected_essay_count=10**400)),
            "INVALID_DATA",
        ),
        Case("deep-nesting", "provisioned", deep, "INVALID_JSON"),
        Case(
            "non-uuid-correlation-id",
            "provisioned",
            env("provisioned", content_data(), correlation_id="corr-1"),
            "INVALID_ENVELOPE",
        ),
        Case(
            "naive-timestamp",
            "provisioned",
            env("provisioned", content_data(), event_timestamp="2026-01-01T10:00:00"),
            "INVALID_ENVELOPE",
        ),
        Case(
            "file-name-256-chars",
            "provisioned",
            env("provisioned", content_data(original_file_name="n" * 256)),
            "INVALID_DATA",
        ),
        Case(
            "bad-md5",
            "provisioned",
            env("provisioned", content_data(content_md5_hash="zz")),
            "INVALID_DATA",
        ),
        Case(
            "empty-error-code", "failed", env("failed", failure_data(error_code="")), "INVALID_DATA"
        ),
        Case(
            "conflicting-re-registration",
            "registered",
            env(
                "registered",
                reg_data(GOOD, [f"{GOOD}-e{i}" for i in range(GOOD_SLOTS - 1)] + ["intruder"]),
            ),
            "REGISTRATION_CONFLICT",
        ),
        Case(
            "registration-after-expiry",
            "registered",
            env("registered", reg_data("expired-batch")),
            "BATCH_EXPIRED",
        ),
    ]
    assert len({c.name for c in cases}) == len(cases)
    return cases


# Unknown fields are NOT bad input (CONTRACT §3, tolerant reader): these are
# accepted, the unknown fields ignored (and counted), the command exactly as
# without them. The data field tries to force the last slot; it must not.
FORCED_SLOT = f"{GOOD}-e{GOOD_SLOTS - 1}"


def tolerated() -> dict[str, bytes]:
    return {
        f"{GOOD}-extra-envelope": env(
            "provisioned",
            content_data(
                GOOD, text_storage_id=f"{GOOD}-extra-envelope", file_upload_id=f"{GOOD}-fx1"
            ),
            priority="high",
        ),
        f"{GOOD}-extra-data": env(
            "provisioned",
            content_data(
                GOOD,
                text_storage_id=f"{GOOD}-extra-data",
                file_upload_id=f"{GOOD}-fx2",
                essay_id=FORCED_SLOT,
            ),
        ),
    }


def unknown_fields_counted(topic: str, where: str) -> float:
    labels = {"topic": topic, "where": where}
    return REGISTRY.get_sample_value("batchslot_unknown_fields_total", labels) or 0.0


# Strange but VALID file names: stored verbatim, never dead-lettered.
VALID_NAMES = {
    "sql-injection": "'); DROP TABLE batchservice_events; --.docx",
    "sql-quote": 'O\'Brien "final" 100% _draft_ \\.docx',
    "unicode": "Эссе №1 — 論文 📝 ñandú.docx",
    "rtl-and-combining": "مقال\u200f e\u0301\u0301.pdf",
    "braces-newline": "redis {key}\r\nFLUSHALL\n*.txt",
    "nul-byte": "a\u0000b.txt",
    "255-chars": "é" * 251 + ".txt",
    "empty": "",
}


async def send_all(settings: Settings, items: list[tuple[str, str, bytes | None]]) -> None:
    """Send (topic, case name, value) in order; the case name travels as key and header."""
    producer = make_producer(settings)
    await producer.start()
    try:
        pending = [
            await producer.send(
                topic, value=value, key=name.encode(), headers=[("case", name.encode())]
            )
            for topic, name, value in items
        ]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def topic(settings: Settings, kind: Kind) -> str:
    t = settings.topics
    return {"registered": t.registered, "provisioned": t.provisioned, "failed": t.failed}[kind]


def good_content(n: int, name: str = "essay.docx") -> bytes:
    return env(
        "provisioned",
        content_data(
            GOOD,
            text_storage_id=f"{GOOD}-t{n}",
            file_upload_id=f"{GOOD}-f{n}",
            original_file_name=name,
        ),
    )


def events_of(service: BatchService, batch_id: str) -> list[Any]:
    return list(service.events.get(Batch.create_id(batch_id)))


def expire_a_batch(settings: Settings, service: BatchService) -> None:
    """Store an expired, never-registered batch (the clock is an input)."""
    service.execute(
        [
            ProvisionContent(
                batch_id="expired-batch",
                correlation_id="c",
                text_storage_id="t",
                file_upload_id="f",
                original_file_name="a",
            )
        ]
    )
    later = datetime.now(UTC) + timedelta(seconds=settings.pending_ttl_seconds + 1)
    future = Bootstrap(settings).batch_service(clock=lambda: later)
    [result] = future.execute([ExpirePending(batch_id="expired-batch", correlation_id="c")])
    future.close()
    assert result.outcome == "recorded"


def test_bad_inputs_are_dead_lettered_and_valid_traffic_is_processed(
    e2e_settings: Settings,
) -> None:
    service = Bootstrap(e2e_settings).batch_service()
    expire_a_batch(e2e_settings, service)
    cases = corpus()
    assert len(cases) >= 30
    reg = env("registered", reg_data(GOOD, [f"{GOOD}-e{i}" for i in range(GOOD_SLOTS)]))
    # Valid traffic between every bad message; strange valid names among it.
    items: list[tuple[str, str, bytes | None]] = []
    valid = 0
    names = list(VALID_NAMES.items())
    for case in cases:
        label, name = names[valid % len(names)] if valid < len(names) else ("plain", "e.docx")
        items.append(
            (
                topic(e2e_settings, "provisioned"),
                f"valid-{valid}:{label}",
                good_content(valid, name),
            )
        )
        valid += 1
        items.append((topic(e2e_settings, case.kind), case.name, case.value))
    items.append((topic(e2e_settings, "provisioned"), f"valid-{valid}", good_content(valid)))
    valid += 1
    extras = tolerated()
    items += [(topic(e2e_settings, "provisioned"), name, value) for name, value in extras.items()]
    assert valid + len(extras) < GOOD_SLOTS - 1  # FORCED_SLOT stays free unless forced
    prov = topic(e2e_settings, "provisioned")
    counted = unknown_fields_counted(prov, "envelope"), unknown_fields_counted(prov, "data")

    async def scenario() -> list[Any]:
        worker = Worker(e2e_settings, service)
        async with running(worker.run):
            await send_all(e2e_settings, [(topic(e2e_settings, "registered"), "reg", reg)])
            await eventually(lambda: (b := service.get_batch(GOOD)) is not None and b.is_registered)
            await send_all(e2e_settings, items)
            dlq = await consume(
                e2e_settings, e2e_settings.topics.dlq, lambda r: len(r) >= len(cases), timeout=60
            )
            await eventually(
                lambda: len(service.get_batch(GOOD).assignments) == valid + len(extras)  # type: ignore[union-attr]
            )
            # Still alive: one more valid message after the whole corpus is processed.
            await send_all(
                e2e_settings, [(topic(e2e_settings, "provisioned"), "last", good_content(valid))]
            )
            await eventually(
                lambda: len(service.get_batch(GOOD).assignments) == valid + len(extras) + 1  # type: ignore[union-attr]
            )
        return dlq

    dlq = asyncio.run(scenario())
    by_case = {dict(r.headers)["case"].decode(): r for r in dlq}
    missing = sorted({c.name for c in cases} - set(by_case))
    assert missing == [] and len(dlq) == len(cases), (missing, len(dlq))
    wrong = {
        c.name: dict(by_case[c.name].headers)["dlq.reason"].decode() if c.name in by_case else None
        for c in cases
        if c.name not in by_case or dict(by_case[c.name].headers)["dlq.reason"] != c.reason.encode()
    }
    assert wrong == {}, wrong
    for case in cases:
        record = by_case[case.name]
        assert record.value == case.value, f"{case.name}: DLQ value is not the original bytes"
        assert record.key == case.name.encode()
        headers = dict(record.headers)
        assert headers["dlq.source.topic"] == topic(e2e_settings, case.kind).encode()
        assert int(headers["dlq.source.offset"]) >= 0 and headers["dlq.detail"]
        assert b"\n" not in headers["dlq.detail"]
    # Every valid message is stored, verbatim; nothing from the corpus reached the store.
    stored = events_of(service, GOOD)
    assigned = {e.text_storage_id: e for e in stored if type(e).__name__ == "SlotAssigned"}
    assert set(assigned) == {f"{GOOD}-t{n}" for n in range(valid + 1)} | set(extras)
    # Tolerated: stored exactly as without the unknown fields, which were counted.
    for tsid, n in ((f"{GOOD}-extra-envelope", 1), (f"{GOOD}-extra-data", 2)):
        assert assigned[tsid].file_upload_id == f"{GOOD}-fx{n}"
        assert assigned[tsid].original_file_name == "essay.docx"
    assert assigned[f"{GOOD}-extra-data"].essay_id != FORCED_SLOT
    assert FORCED_SLOT not in service.get_batch(GOOD).assignments  # type: ignore[union-attr]
    assert unknown_fields_counted(prov, "envelope") == counted[0] + 1
    assert unknown_fields_counted(prov, "data") == counted[1] + 1
    for n, (_, name) in enumerate(names):
        assert assigned[f"{GOOD}-t{n}"].original_file_name == name
    registrations = [e for e in stored if type(e).__name__ == "BatchRegistered"]
    assert len(registrations) == 1 and "intruder" not in registrations[0].essay_ids
    for injected in ("bad-target", "bad-reg", "x}:summary{y", "a b", "batch*", "b" * 129):
        assert events_of(service, injected) == [], injected
    assert [type(e).__name__ for e in events_of(service, "expired-batch")] == [
        "ContentPended",
        "PendingContentExpired",
    ]
    service.close()
