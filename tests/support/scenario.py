"""Realistic upstream traffic: envelopes as the registration and file services send them.

Each batch is one of a few kinds whose outcome does not depend on delivery
order, so a run can be checked however the worker interleaves topics:

- ``normal``: N slots, N - f distinct contents, f validation failures -> complete.
- ``excess``: N slots, N + x distinct contents -> complete, x excess.
- ``timeout``: N slots, N - 2 contents -> timed out with 2 missing slots.

Early content (before the registration), duplicate deliveries and a few
invalid messages (for the dead-letter topic) are mixed in.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID, uuid4

Kind = Literal["registered", "provisioned", "failed"]
EVENT_TYPES: dict[Kind, str] = {
    "registered": "BatchEssaysRegistered",
    "provisioned": "EssayContentProvisioned",
    "failed": "EssayValidationFailed",
}


def envelope(kind: Kind, data: dict[str, Any], correlation_id: UUID | None = None) -> bytes:
    return json.dumps(
        {
            "event_id": str(uuid4()),
            "event_type": EVENT_TYPES[kind],
            "event_timestamp": datetime.now(UTC).isoformat(),
            "source_service": "scenario",
            "correlation_id": str(correlation_id or uuid4()),
            "schema_version": 1,
            "data": data,
        }
    ).encode()


@dataclass(frozen=True)
class Message:
    kind: Kind
    key: str
    value: bytes


@dataclass
class Expectation:
    batch_id: str
    kind: Literal["normal", "excess", "timeout"]
    slots: int
    assigned: int
    failed: int
    excess: int
    outcome: Literal["complete", "timed_out"]


@dataclass
class Scenario:
    messages: list[Message] = field(default_factory=list)
    expected: dict[str, Expectation] = field(default_factory=dict)
    invalid: int = 0


def registration(batch_id: str, essay_ids: list[str]) -> Message:
    data = {"batch_id": batch_id, "essay_ids": essay_ids, "expected_essay_count": len(essay_ids)}
    return Message("registered", batch_id, envelope("registered", data))


def content(
    batch_id: str, tsid: str, file_id: str, name: str = "essay.docx", *, key: str | None = None
) -> Message:
    """``key``: the Kafka key (default the batch id; HuleEdu's File Service sends the
    ``file_upload_id``)."""
    data = {
        "batch_id": batch_id,
        "text_storage_id": tsid,
        "file_upload_id": file_id,
        "original_file_name": name,
    }
    return Message("provisioned", key or batch_id, envelope("provisioned", data))


def failure(batch_id: str, file_id: str, *, key: str | None = None) -> Message:
    data = {
        "batch_id": batch_id,
        "file_upload_id": file_id,
        "original_file_name": "broken.pdf",
        "error_code": "EMPTY_CONTENT",
    }
    return Message("failed", key or batch_id, envelope("failed", data))


def _batch(
    rng: random.Random, batch_id: str, kind: str, slots: int
) -> tuple[list[Message], Message, Expectation]:
    essays = [f"{batch_id}-e{i}" for i in range(slots)]
    failures = rng.randint(0, min(2, slots - 1)) if kind == "normal" else 0
    contents = {"normal": slots - failures, "excess": slots + rng.randint(1, 3)}.get(
        kind, slots - 2
    )
    files = [content(batch_id, f"{batch_id}-t{i}", f"{batch_id}-f{i}") for i in range(contents)]
    files += [failure(batch_id, f"{batch_id}-x{i}") for i in range(failures)]
    expectation = Expectation(
        batch_id,
        kind,  # type: ignore[arg-type]
        slots,
        assigned=min(contents, slots),
        failed=failures,
        excess=max(0, contents - slots),
        outcome="timed_out" if kind == "timeout" else "complete",
    )
    return files, registration(batch_id, essays), expectation


def generate(
    run_tag: str,
    batches: int = 30,
    min_slots: int = 2,
    max_slots: int = 8,
    early_share: float = 0.4,
    duplicate_share: float = 0.25,
    excess_batches: int = 3,
    timeout_batches: int = 1,
    invalid_messages: int = 3,
    seed: int = 7,
) -> Scenario:
    """A shuffled, duplicated stream of upstream messages with known outcomes."""
    rng = random.Random(seed)
    scenario = Scenario()
    for n in range(batches):
        batch_id = f"{run_tag}-b{n:04d}"
        kind = (
            "timeout"
            if n < timeout_batches
            else "excess"
            if n < timeout_batches + excess_batches
            else "normal"
        )
        slots = rng.randint(max(min_slots, 3 if kind == "timeout" else 1), max_slots)
        files, reg, expectation = _batch(rng, batch_id, kind, slots)
        scenario.expected[batch_id] = expectation
        files += [rng.choice(files) for _ in range(int(len(files) * duplicate_share))]
        rng.shuffle(files)
        early = [f for f in files if rng.random() < early_share]
        late = [f for f in files if f not in early]
        scenario.messages += [*early, reg, *late]
    _interleave(rng, scenario.messages)
    for i in range(invalid_messages):
        bad = {"batch_id": f"{run_tag} bad {{{i}}}", "essay_ids": ["e 1"]}
        scenario.messages.insert(
            rng.randrange(len(scenario.messages)),
            Message("registered", f"bad-{i}", envelope("registered", bad)),
        )
        scenario.invalid += 1
    return scenario


def _interleave(rng: random.Random, messages: list[Message]) -> None:
    """Mix batches together while keeping each batch's own (early/late) order."""
    per_batch: dict[str, list[Message]] = {}
    for m in messages:
        per_batch.setdefault(m.key, []).append(m)
    queues = list(per_batch.values())
    messages.clear()
    while queues:
        q = rng.choice(queues)
        messages.append(q.pop(0))
        if not q:
            queues.remove(q)


def generate_load(
    run_tag: str,
    batches: int,
    slots: int,
    *,
    early_share: float = 0.2,
    duplicate_share: float = 0.1,
    failure_share: float = 0.04,
    excess_share: float = 0.1,
    in_flight: int = 50,
    seed: int = 11,
    keys: Literal["batch", "file"] = "batch",
) -> Scenario:
    """Benchmark traffic: ``batches`` batches of ``slots`` slots, every one completing.

    Per batch: ``round(failure_share * slots)`` validation failures, the rest
    content; a share ``excess_share`` of the batches gets 1 to 3 contents too
    many; a share ``duplicate_share`` of the files is delivered twice; each
    file arrives before the registration with probability ``early_share``.
    At most ``in_flight`` batches are interleaved at a time (uploads of one
    batch arrive close together), keeping each batch's own order.

    ``keys``: the Kafka key of the content and validation-failure messages: ``batch``
    (the batch id, as registrations always are) or ``file`` (their ``file_upload_id``,
    as HuleEdu's File Service keys them: one batch's files spread over the partitions).
    The same seed gives the same messages either way; only ``Message.key`` differs.
    """
    by_file = keys == "file"
    rng = random.Random(seed)
    scenario = Scenario()
    streams: list[list[Message]] = []
    for n in range(batches):
        batch_id = f"{run_tag}-b{n:06d}"
        failures = min(slots - 1, round(failure_share * slots))
        extra = rng.randint(1, 3) if rng.random() < excess_share else 0
        contents = slots - failures + extra
        files = [
            content(
                batch_id,
                f"{batch_id}-t{i}",
                f"{batch_id}-f{i}",
                key=f"{batch_id}-f{i}" if by_file else None,
            )
            for i in range(contents)
        ]
        files += [
            failure(batch_id, f"{batch_id}-x{i}", key=f"{batch_id}-x{i}" if by_file else None)
            for i in range(failures)
        ]
        files += [rng.choice(files) for _ in range(int(len(files) * duplicate_share))]
        rng.shuffle(files)
        early = [f for f in files if rng.random() < early_share]
        early_ids = {id(f) for f in early}
        late = [f for f in files if id(f) not in early_ids]
        essays = [f"{batch_id}-e{i}" for i in range(slots)]
        streams.append([*early, registration(batch_id, essays), *late])
        scenario.expected[batch_id] = Expectation(
            batch_id,
            "excess" if extra else "normal",
            slots,
            assigned=slots - failures,
            failed=failures,
            excess=extra,
            outcome="complete",
        )
    waiting = iter(streams)
    active: list[list[Message]] = []
    cursor: list[int] = []
    while True:
        while len(active) < in_flight:
            nxt = next(waiting, None)
            if nxt is None:
                break
            active.append(nxt)
            cursor.append(0)
        if not active:
            break
        i = rng.randrange(len(active))
        scenario.messages.append(active[i][cursor[i]])
        cursor[i] += 1
        if cursor[i] == len(active[i]):
            active[i], cursor[i] = active[-1], cursor[-1]
            active.pop()
            cursor.pop()
    return scenario
