"""The worker against the real broker and PostgreSQL: inbound messages become events."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from application.service import BatchService
from domain import Batch
from infrastructure.bootstrap import Bootstrap
from infrastructure.processes.worker import Worker
from infrastructure.settings import Settings
from tests.e2e.conftest import consume, drained, end_offsets, eventually, produce, running
from tests.support.scenario import Message, content, envelope, failure, registration


def stored_types(service: BatchService, batch_id: str) -> list[str]:
    return [type(e).__name__ for e in service.events.get(Batch.create_id(batch_id))]


def test_messages_become_events_and_invalid_ones_go_to_the_dlq(e2e_settings: Settings) -> None:
    service = Bootstrap(e2e_settings).batch_service()
    bad = Message(
        "registered", "x", envelope("registered", {"batch_id": "has space", "essay_ids": ["e"]})
    )
    messages = [
        content("b1", "t1", "f1"),
        registration("b1", ["e1", "e2", "e3"]),
        content("b1", "t2", "f2"),
        failure("b1", "f9"),
        bad,
        registration("b1", ["e1", "OTHER"]),  # a conflicting re-registration
        Message("provisioned", "b1", b"\xff not json"),
    ]

    async def scenario() -> None:
        async with running(Worker(e2e_settings, service).run):
            await produce(e2e_settings, messages)
            await eventually(
                lambda: (
                    service.get_batch("b1") is not None
                    and service.get_batch("b1").status == "completed"
                )
            )  # type: ignore[union-attr]
        dlq = await consume(e2e_settings, e2e_settings.topics.dlq, lambda r: len(r) >= 3)
        reasons = Counter(dict(r.headers)["dlq.reason"].decode() for r in dlq)
        assert reasons == Counter(
            {"INVALID_DATA": 1, "REGISTRATION_CONFLICT": 1, "INVALID_UTF8": 1}
        )
        originals = {r.value for r in dlq}
        assert bad.value in originals and b"\xff not json" in originals  # unchanged
        headers = dict(dlq[0].headers)
        assert {"dlq.source.topic", "dlq.source.partition", "dlq.source.offset"} <= set(headers)

    asyncio.run(scenario())
    batch = service.get_batch("b1")
    assert batch is not None
    assert batch.assignments == {"e1": "t1", "e2": "t2"}
    assert batch.failures == ("f9",)
    assert stored_types(service, "b1").count("BatchCompleted") == 1
    service.close()


def test_one_file_reported_twice_counts_once_and_the_other_report_is_dead_lettered(
    e2e_settings: Settings,
) -> None:
    """CONTRACT §2 "One file, one outcome" through the worker: file u1 arrives as
    content AND as a failure (on two topics, so in either order), u2 as content.
    Whichever of u1's reports is first is its outcome; the other is dead-lettered
    CONFLICTING_FILE_OUTCOME, and u2 still gets a slot (never excess)."""
    service = Bootstrap(e2e_settings).batch_service()
    messages = [
        content("one", "t1", "u1"),
        failure("one", "u1"),
        content("one", "t1-again", "u1"),  # the same file under a second storage id
        registration("one", ["e1", "e2"]),
        content("one", "t2", "u2"),
    ]

    async def scenario() -> None:
        async with running(Worker(e2e_settings, service).run):
            await produce(e2e_settings, messages)
            await eventually(lambda: (b := service.get_batch("one")) is not None and b.is_closed)
        dlq = await consume(e2e_settings, e2e_settings.topics.dlq, lambda r: len(r) >= 2)
        reasons = Counter(dict(r.headers)["dlq.reason"].decode() for r in dlq)
        assert reasons == Counter({"CONFLICTING_FILE_OUTCOME": 2})  # u1's other two reports

    asyncio.run(scenario())
    types = stored_types(service, "one")
    assert "ExcessContentProvisioned" not in types
    assert types.count("SlotAssigned") + types.count("ValidationFailureRecorded") == 2
    batch = service.get_batch("one")
    assert batch is not None and batch.status == "completed"
    assert "t2" in batch.assignments.values()
    service.close()


def test_twenty_duplicate_deliveries_yield_one_assignment(e2e_settings: Settings) -> None:
    service = Bootstrap(e2e_settings).batch_service()
    messages = [content("dup", "t1", "f1") for _ in range(20)] + [registration("dup", ["e1", "e2"])]

    async def scenario() -> None:
        async with running(Worker(e2e_settings, service).run):
            await produce(e2e_settings, messages)
            await drained(e2e_settings)  # every delivery handled and committed

    asyncio.run(scenario())
    assert stored_types(service, "dup").count("SlotAssigned") == 1
    assert stored_types(service, "dup").count("ContentPended") <= 1
    service.close()


def test_early_content_in_small_batches_is_never_excess(e2e_settings: Settings) -> None:
    """The old design's race: content before registration, batches of 2."""
    service = Bootstrap(e2e_settings).batch_service()
    messages: list[Message] = []
    for n in range(40):
        b = f"race-{n}"
        messages += [content(b, f"{b}-t1", "f1"), content(b, f"{b}-t2", "f2")]
        messages.append(registration(b, [f"{b}-e1", f"{b}-e2"]))

    async def scenario() -> None:
        async with running(Worker(e2e_settings, service).run):
            await produce(e2e_settings, messages)
            await eventually(
                lambda: all(
                    (b := service.get_batch(f"race-{n}")) is not None and b.status == "completed"
                    for n in range(40)
                )
            )

    asyncio.run(scenario())
    for n in range(40):
        types = stored_types(service, f"race-{n}")
        assert "ExcessContentProvisioned" not in types
        assert types.count("SlotAssigned") == 2 and types.count("BatchCompleted") == 1
    service.close()


def test_two_workers_in_one_group_split_the_load_and_lose_nothing(e2e_settings: Settings) -> None:
    service_a = Bootstrap(e2e_settings).batch_service()
    service_b = Bootstrap(e2e_settings).batch_service()
    worker_a, worker_b = Worker(e2e_settings, service_a), Worker(e2e_settings, service_b)
    handled: Counter[str] = Counter()
    for name, worker in (("a", worker_a), ("b", worker_b)):
        original = worker.handle

        async def counting(*args, _orig=original, _name=name, **kwargs):  # type: ignore[no-untyped-def]
            outcome = await _orig(*args, **kwargs)
            handled[_name] += outcome.commands
            return outcome

        worker.handle = counting  # type: ignore[method-assign]
    batches = [f"split-{n}" for n in range(60)]
    messages: list[Message] = []
    for b in batches:
        messages += [
            registration(b, [f"{b}-e1", f"{b}-e2"]),
            content(b, f"{b}-t1", "f1"),
            content(b, f"{b}-t2", "f2"),
            content(b, f"{b}-t3", "f3"),
        ]

    async def scenario() -> None:
        partitions = set(await end_offsets(e2e_settings, e2e_settings.topics.inbound))
        async with running(worker_a.run), running(worker_b.run):
            # The group has settled with both members: each holds some partitions, and
            # together, without overlap, they hold all of them.
            await eventually(lambda: _split_between(partitions, worker_a, worker_b), timeout=60)
            await produce(e2e_settings, messages)
            await drained(e2e_settings, timeout=60)  # every message handled and committed

    asyncio.run(scenario())
    for b in batches:
        types = stored_types(service_a, b)
        assert types.count("SlotAssigned") == 2
        assert types.count("ExcessContentProvisioned") == 1
        assert types.count("BatchCompleted") == 1
    assert handled["a"] > 0 and handled["b"] > 0, handled
    assert handled["a"] + handled["b"] >= len(messages)
    service_a.close()
    service_b.close()


def _split_between(partitions: set[Any], *workers: Worker) -> bool:
    """Each worker holds some of ``partitions``, none twice, all of them together.

    (The worker's consumer is private; the broker cannot describe groups.)
    """
    held = [w._consumer.assignment() if w._consumer else set() for w in workers]
    together = set().union(*held)
    return all(held) and sum(map(len, held)) == len(together) and together == partitions


class _PoisonedService(BatchService):
    """A service with a bug that only one batch's commands trigger."""

    def _apply(self, batch, command, now):  # type: ignore[no-untyped-def]
        if command.batch_id == "poison":
            raise RuntimeError("bug triggered by this message")
        super()._apply(batch, command, now)


def test_a_poison_message_is_dead_lettered_and_the_rest_proceed(e2e_settings: Settings) -> None:
    from infrastructure.postgres.store import ensure_database, event_store_env

    ensure_database(e2e_settings)
    service = _PoisonedService(env=event_store_env(e2e_settings))
    messages = [
        registration("fine", ["e1"]),
        content("poison", "t1", "f1"),
        content("fine", "t2", "f2"),
    ]

    async def scenario() -> list[Any]:
        async with running(Worker(e2e_settings, service).run):
            await produce(e2e_settings, messages)
            await eventually(
                lambda: (b := service.get_batch("fine")) is not None and b.status == "completed"
            )
        return await consume(e2e_settings, e2e_settings.topics.dlq, lambda r: len(r) >= 1)

    dlq = asyncio.run(scenario())
    assert [dict(r.headers)["dlq.reason"] for r in dlq] == [b"PROCESSING_ERROR"]
    assert dlq[0].value == messages[1].value
    assert service.get_batch("poison") is None
    service.close()
