"""The fault run's oracle (tests/support/chaos/checker.py) on small synthetic histories.

The stored events are real: the ``Batch`` aggregate decides the sent messages
(through ``application.service.apply_command``, as the service does), so the
histories have the shapes the run reads back from the store. Each test breaks
one thing and asserts the checker names exactly that; a clean history passes.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from application.messages import InvalidMessage, parse_message
from application.service import apply_command
from domain import Batch, BatchRejection
from projections.envelope import event_id_of
from tests.support.chaos.checker import FaultRecord, History, Report, check
from tests.support.chaos.store import StoredEvent
from tests.support.scenario import (
    Expectation,
    Message,
    Scenario,
    content,
    envelope,
    failure,
    registration,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TIMEOUT = 60  # the run's BATCH_TIMEOUT_SECONDS


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    headers: list[tuple[str, bytes]]
    value: bytes | None


def decide(messages: list[Message], timeout: int = TIMEOUT) -> list[StoredEvent]:
    """The store after the aggregate decided ``messages`` in order, one second apart."""
    batches: dict[str, Batch] = {}
    stored: list[StoredEvent] = []
    for i, m in enumerate(messages):
        try:
            command = parse_message(m.kind, m.value)
        except InvalidMessage:
            continue
        now = T0 + timedelta(seconds=i)
        batch = batches.setdefault(command.batch_id, Batch.start(command.batch_id, now))
        try:
            apply_command(batch, command, now, timeout_seconds=timeout, pending_ttl_seconds=86400)
        except BatchRejection:
            continue
        for e in batch.collect_events():
            stored.append(StoredEvent.of(len(stored) + 1, e))
    return stored


def published(stored: list[StoredEvent]) -> list[tuple[str, str, int]]:
    """The events topic: every stored event once, in store order."""
    return [
        (str(event_id_of(e.originator_id, e.version)), str(e.data["batch_id"]), i)
        for i, e in enumerate(stored)
    ]


INVALID = Message(
    "registered", "bad-0", envelope("registered", {"batch_id": "bad id", "essay_ids": ["e 1"]})
)


def dead_letter(m: Message, offset: int) -> DeadLetter:
    headers = [
        ("dlq.reason", b"INVALID_MESSAGE"),
        ("dlq.source.topic", b"reg"),
        ("dlq.source.partition", b"0"),
        ("dlq.source.offset", str(offset).encode()),
    ]
    return DeadLetter(headers, m.value)


def history(**changes: object) -> History:
    """A clean run: one batch of two slots, a duplicate delivery, one invalid message."""
    reg = registration("b1", ["b1-e0", "b1-e1"])
    c0 = content("b1", "b1-t0", "b1-f0")
    c1 = content("b1", "b1-t1", "b1-f1")
    sent = [c0, reg, c0, c1, INVALID]
    scenario = Scenario(messages=sent, invalid=1)
    scenario.expected["b1"] = Expectation("b1", "normal", 2, 2, 0, 0, "complete")
    stored = decide(sent)
    base = History(
        sent=sent,
        stored=stored,
        published=published(stored),
        dead_letters=[("before", dead_letter(INVALID, 4))],
        scenarios=[scenario],
        batch_timeout_seconds=TIMEOUT,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def run(h: History, divergence: int = 0) -> Report:
    report = Report(seed=0, batches=len(h.scenarios[0].expected), divergence=divergence)
    return check(h, report)


def found(report: Report) -> dict[str, int]:
    return {k: n for k, n in report.violations().items() if n}


def test_a_clean_history_passes_and_is_counted() -> None:
    report = run(history())
    assert found(report) == {}
    assert report.stored_events == 5  # pended, registered (+ assigned), assigned, completed
    assert (report.messages_sent, report.distinct_messages) == (5, 4)
    assert (report.invalid_sent, report.valid_deliveries) == (1, 4)
    assert (report.recorded, report.noop) == (3, 1)
    assert (report.dead_lettered, report.dead_letter_duplicates) == (1, 0)
    assert report.duplicate_publications == 0


def test_a_lost_write_is_found() -> None:
    h = history()
    lost = content("b1", "b1-t9", "b1-f9")  # sent, accepted by the parser, never stored
    h = dataclasses.replace(h, sent=[*h.sent, lost])
    report = run(h)
    assert found(report) == {"lost writes": 1}
    assert "ProvisionContent b1" in report.lost_writes[0]


def test_a_lost_failure_of_an_open_batch_is_found() -> None:
    h = history()
    reg = registration("b2", ["b2-e0", "b2-e1"])
    lost = failure("b2", "b2-x0")  # b2 stays open: the failure should have been stored
    stored = decide([*h.sent, reg])
    h = dataclasses.replace(
        h, sent=[*h.sent, reg, lost], stored=stored, published=published(stored)
    )
    report = run(h)
    assert found(report) == {"lost writes": 1}
    assert "RecordValidationFailure b2" in report.lost_writes[0]


def test_a_failure_after_its_batch_closed_is_not_a_lost_write() -> None:
    """CONTRACT §2: after close a new failure changes nothing (it is not stored)."""
    h = history()
    late = failure("b1", "b1-x9")  # b1 completed before it arrived
    h = dataclasses.replace(h, sent=[*h.sent, late])
    assert decide(h.sent) == h.stored  # the aggregate itself stores nothing for it
    assert found(run(h)) == {}


def test_a_duplicate_effect_is_found() -> None:
    h = history()
    assigned = next(e for e in h.stored if e.type == "SlotAssigned")
    again = dataclasses.replace(
        assigned, notification_id=len(h.stored) + 1, version=len(h.stored) + 1
    )
    stored = [*h.stored, again]
    report = run(dataclasses.replace(h, stored=stored, published=published(stored)))
    assert report.duplicate_effects == [
        f"b1: content {assigned.data['text_storage_id']} placed 2x",
        f"b1: slot {assigned.data['essay_id']} assigned 2x",
    ]
    assert found(report).keys() == {"duplicate effects", "outcome mismatches"}


def test_a_second_completion_is_a_duplicate_effect() -> None:
    h = history()
    done = next(e for e in h.stored if e.type == "BatchCompleted")
    again = dataclasses.replace(done, notification_id=6, version=6)
    stored = [*h.stored, again]
    report = run(dataclasses.replace(h, stored=stored, published=published(stored)))
    assert report.duplicate_effects == ["b1: completed 2x"]


def test_a_version_gap_is_found() -> None:
    h = history()
    last = h.stored[-1]
    stored = [*h.stored[:-1], dataclasses.replace(last, version=last.version + 1)]
    report = run(dataclasses.replace(h, stored=stored, published=published(stored)))
    assert found(report) == {"version gaps": 1}
    assert report.version_gaps == ["b1: versions [1, 2, 3, 4, 6]"]


def test_an_out_of_order_publication_is_found() -> None:
    h = history()
    records = published(h.stored)
    records[1], records[2] = records[2], records[1]
    report = run(dataclasses.replace(h, published=records))
    assert found(report) == {"out-of-order publications": 1}
    assert report.out_of_order_publications == ["b1: [1, 3, 2, 4, 5]"]


def test_a_stored_event_missing_from_the_topic_is_found() -> None:
    h = history()
    report = run(dataclasses.replace(h, published=published(h.stored)[:-1]))
    assert found(report) == {"stored events missing from the events topic": 1}
    assert report.lost_publications == ["#5 BatchCompleted"]


def test_duplicate_publications_are_allowed_and_attributed_to_the_outbox_restart() -> None:
    h = history()
    records = published(h.stored)
    records += [(eid, key, len(records) + i) for i, (eid, key, _) in enumerate(records[3:])]
    report = Report(seed=0, batches=1, divergence=0)
    report.faults = [FaultRecord("kill_outbox", "outbox", 1.0, outbox_position=3)]
    check(dataclasses.replace(h, published=records), report)
    assert found(report) == {}
    assert report.duplicate_publications == 2
    assert report.republished_per_outbox_restart == [2]


def test_an_event_republished_after_a_broker_restart_is_found() -> None:
    h = history()
    records = published(h.stored)
    base = len(records)
    records.append((records[0][0], "b1", base))  # an event of before, again after
    h = dataclasses.replace(h, published=records, head_at_broker_restart=5, tap_base=base)
    report = run(h)
    assert found(report) == {"republished after broker restart": 1}


def test_a_premature_timeout_is_found() -> None:
    reg = registration("b2", ["b2-e0", "b2-e1", "b2-e2"])
    sent = [reg, content("b2", "b2-t0", "b2-f0")]
    scenario = Scenario(messages=sent)
    scenario.expected["b2"] = Expectation("b2", "timeout", 3, 1, 0, 0, "timed_out")
    # The aggregate was given a 1 s deadline; the run's configured timeout is 60 s.
    stored = decide(sent, timeout=1)
    closing = _time_out("b2", sent, T0 + timedelta(seconds=10), timeout=1)
    stored += [StoredEvent.of(len(stored) + 1, closing)]
    h = History(
        sent=sent,
        stored=stored,
        published=published(stored),
        dead_letters=[],
        scenarios=[scenario],
        batch_timeout_seconds=TIMEOUT,
    )
    report = run(h)
    assert found(report) == {"timeouts before the deadline": 1}
    assert report.premature_timeouts == ["b2: timed out after 10.0s"]


def _time_out(batch_id: str, sent: list[Message], now: datetime, timeout: int) -> object:
    """The sweep's BatchCompleted(timed_out) for a batch built from ``sent``."""
    batch = Batch.start(batch_id, T0)
    for i, m in enumerate(sent):
        apply_command(
            batch,
            parse_message(m.kind, m.value),
            T0 + timedelta(seconds=i),
            timeout_seconds=timeout,
            pending_ttl_seconds=86400,
        )
    batch.collect_events()
    batch.time_out(now, "sweep")
    (closing,) = batch.collect_events()
    return closing


def test_an_outcome_mismatch_is_found() -> None:
    h = history()
    scenario = Scenario(messages=h.sent, invalid=1)
    scenario.expected["b1"] = Expectation("b1", "excess", 2, 2, 0, 1, "complete")
    report = run(dataclasses.replace(h, scenarios=[scenario]))
    assert found(report) == {"outcome mismatches": 1}
    assert report.outcome_mismatches == ["b1: complete (2, 0, 0), expected complete (2, 0, 1)"]


def test_a_batch_never_closed_is_found() -> None:
    h = history()
    stored = [e for e in h.stored if e.type != "BatchCompleted"]
    report = run(dataclasses.replace(h, stored=stored, published=published(stored)))
    assert found(report) == {"batches never closed": 1}


def test_a_valid_message_dead_lettered_or_an_invalid_one_not_is_found() -> None:
    h = history()
    valid = h.sent[1]
    report = run(dataclasses.replace(h, dead_letters=[("before", dead_letter(valid, 1))]))
    assert found(report) == {"valid messages dead-lettered / invalid not": 2}
    assert sorted(x.split(":")[0] for x in report.wrongly_dead_lettered) == [
        "invalid not in DLQ",
        "valid dead-lettered",
    ]


def test_read_model_divergence_is_a_violation() -> None:
    assert found(run(history(), divergence=3)) == {"read-model divergence": 3}
    # verify could not run (-1): counted as a violation, not as agreement
    assert found(run(history(), divergence=-1)) == {"read-model divergence": 1}
