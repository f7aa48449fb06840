"""The fault run's oracle: a history checker over what was sent, stored and published.

``check(history)`` reads nothing itself: the run (``run.py``) collects the
history (the messages it sent, the stored events, the records it read from the
events topic and the dead-letter topic, the scenarios' expectations) and the
checker finds, per kind, every violation of the contract:

- lost writes: an accepted input its batch's stream does not know;
- duplicate effects: content placed twice, a slot assigned twice, a batch
  completed twice;
- version gaps in a batch's stream;
- stored events missing from the events topic, events republished after a
  broker restart, publications out of stream order per batch;
- valid messages dead-lettered, invalid ones not;
- outcome mismatches against the scenario, batches never closed, timeouts
  before the deadline;
- read-model divergence (``batchctl verify``, measured by the run).

It is unit-tested with synthetic histories (tests/unit/test_chaos_checker.py).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from application.messages import InvalidMessage, parse_message
from projections.envelope import event_id_of
from tests.support.chaos.store import StoredEvent
from tests.support.scenario import Message, Scenario

NO_BROKER_RESTART = 1 << 62  # every event is "before" the (absent) broker restart


@dataclass
class FaultRecord:
    kind: str
    target: str
    at: float  # seconds since the start of the run
    repaired_after: float = 0.0  # seconds from injection to repair
    recovery_seconds: float | None = None  # repair -> probe batch end to end
    note: str = ""
    outbox_position: int | None = None  # kill_outbox: the position the restart resumes from
    republished: int | None = None  # kill_outbox: events the restart published again


@dataclass
class Report:
    seed: int
    batches: int
    messages_sent: int = 0
    distinct_messages: int = 0
    invalid_sent: int = 0
    valid_deliveries: int = 0
    recorded: int = 0
    noop: int = 0
    dead_lettered: int = 0
    dead_letter_duplicates: int = 0
    stored_events: int = 0
    published_records: int = 0
    duplicate_publications: int = 0
    lost_writes: list[str] = field(default_factory=list)
    lost_publications: list[str] = field(default_factory=list)
    republished_after_broker_restart: int = 0
    duplicate_effects: list[str] = field(default_factory=list)
    version_gaps: list[str] = field(default_factory=list)
    out_of_order_publications: list[str] = field(default_factory=list)
    wrongly_dead_lettered: list[str] = field(default_factory=list)
    outcome_mismatches: list[str] = field(default_factory=list)
    unclosed_batches: list[str] = field(default_factory=list)
    timed_out_by_delay: list[str] = field(default_factory=list)
    premature_timeouts: list[str] = field(default_factory=list)
    divergence: int = -1
    unexpected_exits: list[str] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    republished_per_outbox_restart: list[int] = field(default_factory=list)
    broker_restart_note: str = ""
    seconds: float = 0.0

    def violations(self) -> dict[str, int]:
        return {
            "lost writes": len(self.lost_writes),
            "stored events missing from the events topic": len(self.lost_publications),
            "republished after broker restart": self.republished_after_broker_restart,
            "duplicate effects": len(self.duplicate_effects),
            "version gaps": len(self.version_gaps),
            "out-of-order publications": len(self.out_of_order_publications),
            "valid messages dead-lettered / invalid not": len(self.wrongly_dead_lettered),
            "outcome mismatches": len(self.outcome_mismatches),
            "batches never closed": len(self.unclosed_batches),
            "timeouts before the deadline": len(self.premature_timeouts),
            "read-model divergence": self.divergence if self.divergence >= 0 else 1,
        }


class DeadLetter(Protocol):
    """A record read from the DLQ topic (aiokafka's ConsumerRecord has these)."""

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...

    @property
    def value(self) -> bytes | None: ...


@dataclass
class History:
    """Everything the checker judges, collected by the run."""

    sent: list[Message]  # every message produced, duplicates included
    stored: list[StoredEvent]  # the event store, in notification order
    published: list[tuple[str, str, int]]  # events topic: (event_id, key, arrival index)
    dead_letters: list[tuple[str, DeadLetter]]  # ("before"/"after" broker restart, record)
    scenarios: list[Scenario]  # the expected outcome of every batch sent
    batch_timeout_seconds: int
    probes: Sequence[str] = ()  # one-slot probe batches (one content each): complete
    head_at_broker_restart: int = NO_BROKER_RESTART  # store head when the broker restarted
    tap_base: int = NO_BROKER_RESTART  # arrival index of the first record after it


def check(history: History, report: Report) -> Report:
    """Fill ``report`` with the measures and violations of ``history``; return it."""
    r = report
    stored = history.stored
    r.stored_events = len(stored)
    by_batch: dict[str, list[StoredEvent]] = defaultdict(list)
    for e in stored:
        by_batch[str(e.data.get("batch_id"))].append(e)
    # Messages: distinct by bytes (a duplicate delivery repeats the same envelope).
    r.messages_sent = len(history.sent)
    distinct = {m.value: m for m in history.sent}
    r.distinct_messages = len(distinct)
    cids = {str(e.data.get("correlation_id")) for e in stored}
    valid: list[tuple[Message, Any]] = []
    invalid: set[bytes] = set()
    for m in distinct.values():
        try:
            valid.append((m, parse_message(m.kind, m.value)))
        except InvalidMessage:
            invalid.add(m.value)
    r.invalid_sent = sum(1 for m in history.sent if m.value in invalid)
    r.valid_deliveries = r.messages_sent - r.invalid_sent
    r.recorded = sum(1 for _, c in valid if c.correlation_id in cids)
    r.noop = r.valid_deliveries - r.recorded
    _check_dead_letters(history, r, valid, invalid)
    _check_lost_writes(r, valid, by_batch)
    _check_streams(r, by_batch)
    # Outcomes against the scenario's expectations.
    for scenario in history.scenarios:
        for batch_id, exp in scenario.expected.items():
            _check_outcome(
                r,
                history.batch_timeout_seconds,
                batch_id,
                (exp.assigned, exp.failed, exp.excess),
                exp.outcome,
                by_batch.get(batch_id, []),
            )
    for batch_id in history.probes:
        _check_outcome(
            r,
            history.batch_timeout_seconds,
            batch_id,
            (1, 0, 0),
            "complete",
            by_batch.get(batch_id, []),
        )
    _check_publications(history, r)
    return r


def _check_dead_letters(
    history: History, r: Report, valid: list[tuple[Message, Any]], invalid: set[bytes]
) -> None:
    """Each invalid message dead-lettered once (or more after a crash), no valid one."""
    sources = Counter(
        (phase, *(dict(x.headers)[f"dlq.source.{h}"] for h in ("topic", "partition", "offset")))
        for phase, x in history.dead_letters
    )
    r.dead_lettered = len(sources)
    r.dead_letter_duplicates = sum(n - 1 for n in sources.values())
    dlq_values = {x.value for _, x in history.dead_letters}
    r.wrongly_dead_lettered = [
        f"invalid not in DLQ: {v[:60]!r}" for v in invalid if v not in dlq_values
    ]
    r.wrongly_dead_lettered += [
        f"valid dead-lettered: {m.key}" for m, _ in valid if m.value in dlq_values
    ]


def _check_lost_writes(
    r: Report, valid: list[tuple[Message, Any]], by_batch: dict[str, list[StoredEvent]]
) -> None:
    """Every accepted input is known to its batch in the store."""
    for m, c in valid:
        events = by_batch.get(c.batch_id, [])
        kind = type(c).__name__
        if kind == "RegisterBatch":
            ok = any(
                e.type == "BatchRegistered" and e.data["essay_ids"] == list(c.essay_ids)
                for e in events
            )
        elif kind == "ProvisionContent":
            ok = any(
                c.text_storage_id == e.data.get("text_storage_id")
                or c.text_storage_id in e.data.get("text_storage_ids", ())
                for e in events
            )
        else:
            # CONTRACT §2: "After the batch is closed a new failure changes nothing and
            # does not count": one that arrived after its batch closed (a fault delayed
            # it past the deadline) is rightly not stored. Whether a closed batch
            # counted what it needed is the outcome check's business.
            ok = any(
                e.type == "ValidationFailureRecorded"
                and e.data["file_upload_id"] == c.file_upload_id
                for e in events
            ) or any(e.type in ("BatchCompleted", "PendingContentExpired") for e in events)
        if not ok:
            r.lost_writes.append(f"{kind} {c.batch_id} {m.value[:40]!r}")


def _check_streams(r: Report, by_batch: dict[str, list[StoredEvent]]) -> None:
    """Duplicate effects and version gaps, per batch."""
    for batch_id, events in by_batch.items():
        versions = sorted(e.version for e in events)
        if versions != list(range(1, len(versions) + 1)):
            r.version_gaps.append(f"{batch_id}: versions {versions[:10]}")
        tsids = Counter(
            e.data["text_storage_id"]
            for e in events
            if e.type in ("SlotAssigned", "ExcessContentProvisioned")
        )
        slots = Counter(e.data["essay_id"] for e in events if e.type == "SlotAssigned")
        completions = sum(
            1 for e in events if e.type == "BatchCompleted" and e.data.get("part", 1) == 1
        )
        r.duplicate_effects += [
            f"{batch_id}: content {t} placed {n}x" for t, n in tsids.items() if n > 1
        ]
        r.duplicate_effects += [
            f"{batch_id}: slot {e} assigned {n}x" for e, n in slots.items() if n > 1
        ]
        if completions > 1:
            r.duplicate_effects.append(f"{batch_id}: completed {completions}x")


def _check_publications(history: History, r: Report) -> None:
    """Every stored event on the events topic, in order per batch."""
    stored, records = history.stored, history.published
    published = Counter(e for e, _, _ in records)
    r.published_records = len(records)
    r.duplicate_publications = sum(n - 1 for n in published.values())
    _republished_per_restart(r, published, stored)
    # Before a broker restart, every event stored up to then must have been on the
    # topic; after it, every later event must be, and no earlier one again.
    head, base = history.head_at_broker_restart, history.tap_base
    before = {e for e, _, i in records if i < base}
    after = {e for e, _, i in records if i >= base}
    for e in stored:
        eid = str(event_id_of(e.originator_id, e.version))
        if eid not in (before if e.notification_id <= head else after):
            r.lost_publications.append(f"#{e.notification_id} {e.type}")
        if e.notification_id <= head and eid in after:
            r.republished_after_broker_restart += 1
    first_seen: dict[str, list[int]] = defaultdict(list)
    version_of = {str(event_id_of(e.originator_id, e.version)): e.version for e in stored}
    seen: set[str] = set()
    for eid, key, _ in records:
        if eid not in seen and eid in version_of:
            seen.add(eid)
            first_seen[key].append(version_of[eid])
    for key, versions in first_seen.items():
        if versions != sorted(versions):
            r.out_of_order_publications.append(f"{key}: {versions[:10]}")


def _republished_per_restart(r: Report, published: Counter[str], stored: list[StoredEvent]) -> None:
    """Per kill_outbox: the duplicated publications of the events after its position.

    Each duplicated event is attributed to the restart with the highest position
    below it (a restart republishes only what lies beyond its position).
    """
    kills = sorted(
        (f for f in r.faults if f.outbox_position is not None),
        key=lambda f: f.outbox_position or 0,
    )
    for f in kills:
        f.republished = 0
    for e in stored:
        extra = published.get(str(event_id_of(e.originator_id, e.version)), 0) - 1
        owner = None
        for f in kills:
            if (f.outbox_position or 0) < e.notification_id:
                owner = f
        if extra > 0 and owner is not None:
            owner.republished = (owner.republished or 0) + extra
    r.republished_per_outbox_restart = [f.republished or 0 for f in kills]


def _check_outcome(
    r: Report,
    batch_timeout_seconds: int,
    batch_id: str,
    expected_counts: tuple[int, int, int],
    outcome: str,
    events: list[StoredEvent],
) -> None:
    """The batch closed as its scenario says: (assigned, failed, excess) and outcome."""
    done = [e for e in events if e.type == "BatchCompleted"]
    if not done:
        r.unclosed_batches.append(batch_id)
        return
    got = done[0].data["outcome"]
    counts = (
        sum(1 for e in events if e.type == "SlotAssigned"),
        sum(1 for e in events if e.type == "ValidationFailureRecorded"),
        sum(1 for e in events if e.type == "ExcessContentProvisioned"),
    )
    registered = [e for e in events if e.type == "BatchRegistered"]
    if got == "timed_out" and registered:
        waited = (done[0].data["timestamp"] - registered[0].data["timestamp"]).total_seconds()
        if waited < batch_timeout_seconds:
            r.premature_timeouts.append(f"{batch_id}: timed out after {waited:.1f}s")
    if got == "timed_out" and outcome == "complete":
        r.timed_out_by_delay.append(batch_id)  # a fault delayed it past its deadline
    elif got != outcome or (got == "complete" and counts != expected_counts):
        r.outcome_mismatches.append(
            f"{batch_id}: {got} {counts}, expected {outcome} {expected_counts}"
        )
