"""The BatchService against the reference model, over random command sequences.

A Hypothesis state machine sends commands (registration anywhere, duplicates,
failures, excess, sweeps), moves the injected clock, executes several commands
in one call, and restarts service instances on the same store. After every
step each batch is checked three ways: the stored stream equals the stream the
reference model would have stored (types, payloads, correlation ids,
timestamps); a fresh replay of the stored events and the service's own loaded
aggregate both equal the reference state; and the stream obeys the invariants
of CONTRACT §2 on its own terms (checked without the reference).

Runs in memory (popo) with the profile's example count, and on real
PostgreSQL, in a fresh schema per example, with a fraction of it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from eventsourcing.persistence import ApplicationRecorder, EventStore
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from application.commands import (
    AnyCommand,
    ProvisionContent,
    RecordValidationFailure,
    RegisterBatch,
)
from application.service import BatchService, Result
from domain import Batch
from infrastructure.bootstrap import Bootstrap
from infrastructure.settings import Settings
from tests.conftest import ManualClock, drop_schema, make_settings
from tests.property.reference import RefBatch, Reference, RefResult
from tests.strategies import (
    BATCH_IDS,
    PENDING_TTL_SECONDS,
    TIMEOUT_SECONDS,
    Tick,
    contents,
    failures,
    registrations,
    steps,
    sweeps,
    ticks,
)

POPO_ENV = {"PERSISTENCE_MODULE": "eventsourcing.popo", "AGGREGATE_CACHE_MAXSIZE": "100"}
INSTANCES = 2

commands: st.SearchStrategy[AnyCommand] = st.one_of(
    *[
        st.one_of(registrations(b), contents(b), contents(b), failures(b), sweeps(b))
        for b in BATCH_IDS
    ]
)


# ---------------------------------------------------------------- the store


class SharedPopoStore:
    """One in-memory store that several service instances (restarts) share."""

    def __init__(self) -> None:
        self.recorder: ApplicationRecorder | None = None
        self.snapshots: Any = None


class SharedPopoBatchService(BatchService):
    """A BatchService whose in-memory recorders outlive the instance."""

    def __init__(self, store: SharedPopoStore, **kwargs: Any) -> None:
        self._shared = store
        super().__init__(env=POPO_ENV, **kwargs)

    def construct_recorder(self) -> ApplicationRecorder:
        if self._shared.recorder is None:
            self._shared.recorder = super().construct_recorder()
        return self._shared.recorder

    def construct_snapshot_store(self) -> EventStore[Any]:
        store = super().construct_snapshot_store()
        if self._shared.snapshots is None:
            self._shared.snapshots = store.recorder
        store.recorder = self._shared.snapshots
        return store


# ------------------------------------------------------------------ checks


def event_dict(event: Any) -> dict[str, Any]:
    data = {k: v for k, v in event.__dict__.items() if k not in ("originator_id",)}
    data.pop("originator_version")
    return {"type": type(event).__name__, **data}


def aggregate_state(batch: Batch) -> dict[str, Any]:
    return {
        "status": batch.status,
        "essay_ids": list(batch.essay_ids),
        "deadline": batch.deadline,
        "first_pending_at": batch.first_pending_at,
        "assignments": list(batch.assignments.items()),
        "available": list(batch.available_slots),
        "pending": list(batch.pending),
        "excess": batch.excess,
        "failures": list(batch.failures),
        "version": batch.version,
    }


def reference_state(ref: RefBatch) -> dict[str, Any]:
    return {
        "status": ref.status,
        "essay_ids": list(ref.essay_ids),
        "deadline": ref.deadline,
        "first_pending_at": ref.first_pending_at,
        "assignments": [(e, ref.assigned[e]) for e in ref.essay_ids if e in ref.assigned],
        "available": ref.free_slots,
        "pending": list(ref.pending),
        "excess": dict(ref.excess),
        "failures": list(ref.failures),
        "version": ref.version,
    }


def check_stream_invariants(batch_id: str, events: list[Any]) -> None:
    """CONTRACT §2 on the stored stream alone (no reference model)."""
    kinds = [type(e).__name__ for e in events]
    assert all(e.batch_id == batch_id for e in events)
    assigned = [e for e in events if type(e).__name__ == "SlotAssigned"]
    excess = [e for e in events if type(e).__name__ == "ExcessContentProvisioned"]
    # No slot assigned twice, no content assigned twice, assigned content never excess.
    assert len({e.essay_id for e in assigned}) == len(assigned)
    assert len({e.text_storage_id for e in assigned}) == len(assigned)
    assert len({e.text_storage_id for e in excess}) == len(excess)
    assert not {e.text_storage_id for e in assigned} & {e.text_storage_id for e in excess}
    # Registered at most once; slots come from the registration, in its order.
    regs = [e for e in events if type(e).__name__ == "BatchRegistered"]
    assert len(regs) <= 1
    if not regs:
        assert not assigned
    else:
        slots = regs[0].essay_ids
        assert [e.essay_id for e in assigned] == slots[: len(assigned)]
    # Completion exactly once (its parts consecutive, numbered 1..n of n), only
    # when earned, and nothing assigned after it.
    done = [i for i, k in enumerate(kinds) if k == "BatchCompleted"]
    if done:
        assert done == list(range(done[0], done[0] + len(done)))
    assert [(events[i].part, events[i].parts) for i in done] == [
        (n, len(done)) for n in range(1, len(done) + 1)
    ]
    # One file, one outcome: a file never fills two slots, never both fills a slot
    # and fails, never fails twice; so it counts at most once toward completion.
    counted = Counter(
        e.file_upload_id
        for e, k in zip(events, kinds, strict=True)
        if k in ("SlotAssigned", "ValidationFailureRecorded")
    )
    assert all(n == 1 for n in counted.values()), counted
    failed_fuids: set[str] = set()
    n_assigned = 0
    closed = False
    registered_at: int | None = None
    pended: set[str] = set()
    for i, e in enumerate(events):
        kind = kinds[i]
        if kind == "BatchRegistered":
            registered_at = i
        elif kind == "ContentPended":
            assert registered_at is None and not closed
            pended.add(e.text_storage_id)
        elif kind == "SlotAssigned":
            assert not closed
            n_assigned += 1
        elif kind == "ValidationFailureRecorded":
            assert e.file_upload_id not in failed_fuids
            assert not closed  # after close a new failure changes nothing
            failed_fuids.add(e.file_upload_id)
        elif kind == "ExcessContentProvisioned":
            # Early content is never excess merely for arriving early: excess
            # needs an open batch with every slot filled, or a closed batch.
            assert registered_at is not None or closed
            if e.reason == "NO_AVAILABLE_SLOT":
                assert not closed and n_assigned == len(regs[0].essay_ids)
            else:
                assert e.reason == "BATCH_CLOSED" and closed
            if e.text_storage_id in pended and not closed:
                assert events[registered_at].correlation_id == e.correlation_id  # type: ignore[index]
        elif kind == "BatchCompleted" and e.part > 1:
            assert closed and kinds[i - 1] == "BatchCompleted"
        elif kind == "BatchCompleted":
            assert registered_at is not None and not closed
            expected = len(regs[0].essay_ids)
            if e.outcome == "complete":
                assert n_assigned + len(failed_fuids) >= expected
            else:
                assert e.outcome == "timed_out"
                assert e.timestamp >= regs[0].deadline
                assert n_assigned + len(failed_fuids) < expected
            assert len(e.ready) == n_assigned
            assert len(e.missing_essay_ids) == expected - n_assigned
            closed = True
        elif kind == "PendingContentExpired":
            assert registered_at is None and not closed
            assert set(e.text_storage_ids) == pended
            closed = True
    # Still open only while not yet earned.
    if registered_at is not None and not closed:
        assert n_assigned + len(failed_fuids) < len(regs[0].essay_ids)


def replay(events: list[Any]) -> Batch | None:
    """Fold the stored events into a new aggregate: no cache, no snapshot."""
    batch: Batch | None = None
    for event in events:
        batch = event.mutate(batch)
    return batch


# ----------------------------------------------------------------- machine


class BatchMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.reference = Reference(TIMEOUT_SECONDS, PENDING_TTL_SECONDS)
        self.open_store()
        self.services = [self.new_service() for _ in range(INSTANCES)]
        self.commands_run = 0

    # -- backend hooks
    def open_store(self) -> None:
        self.store = SharedPopoStore()

    def new_service(self) -> BatchService:
        return SharedPopoBatchService(
            self.store,
            clock=self.clock,
            timeout_seconds=TIMEOUT_SECONDS,
            pending_ttl_seconds=PENDING_TTL_SECONDS,
        )

    def teardown(self) -> None:
        for svc in self.services:
            svc.close()

    # -- helpers
    def run(self, instance: int, batch: list[AnyCommand]) -> None:
        now = self.clock()
        results = self.services[instance].execute(batch)
        expected = [self.reference.apply(cmd, now) for cmd in batch]
        assert [outcome(r) for r in results] == expected, batch
        assert [r.command for r in results] == batch
        self.commands_run += len(batch)

    # -- rules
    @rule(step=steps(), instance=st.integers(0, INSTANCES - 1))
    def step(self, step: Any, instance: int) -> None:
        if isinstance(step, Tick):
            self.clock.advance(step.seconds)
        else:
            self.run(instance, [step])

    @rule(batch=st.lists(commands, min_size=2, max_size=5), instance=st.integers(0, INSTANCES - 1))
    def several_in_one_call(self, batch: list[AnyCommand], instance: int) -> None:
        self.run(instance, batch)

    @rule(tick=ticks)
    def tick(self, tick: Tick) -> None:
        self.clock.advance(tick.seconds)

    @rule(instance=st.integers(0, INSTANCES - 1))
    def restart(self, instance: int) -> None:
        self.services[instance].close()
        self.services[instance] = self.new_service()

    @precondition(lambda self: any(b.status == "open" for b in self.reference.batches.values()))
    @rule(data=st.data())
    def fill_an_open_batch(self, data: st.DataObject) -> None:
        """Drive an open batch to completion with fresh content (and one extra)."""
        open_ids = sorted(b for b, r in self.reference.batches.items() if r.status == "open")
        batch_id = data.draw(st.sampled_from(open_ids))
        ref = self.reference.batches[batch_id]
        n = len(ref.free_slots) + 1
        batch: list[AnyCommand] = [
            ProvisionContent(
                batch_id=batch_id,
                correlation_id=f"fill-{self.commands_run}",
                text_storage_id=f"fill-{self.commands_run}-{i}",
                file_upload_id=f"ffill-{self.commands_run}-{i}",
                original_file_name="fill.txt",
            )
            for i in range(n)
        ]
        self.run(data.draw(st.integers(0, INSTANCES - 1)), batch)
        assert self.reference.batches[batch_id].status == "completed"

    @precondition(lambda self: any(b.essay_ids for b in self.reference.batches.values()))
    @rule(data=st.data())
    def register_again(self, data: st.DataObject) -> None:
        """The same registration again: must be a no-op wherever it lands."""
        ids = sorted(b for b, r in self.reference.batches.items() if r.essay_ids)
        batch_id = data.draw(st.sampled_from(ids))
        cmd = RegisterBatch(
            batch_id=batch_id,
            correlation_id="again",
            essay_ids=self.reference.batches[batch_id].essay_ids,
        )
        self.run(data.draw(st.integers(0, INSTANCES - 1)), [cmd])

    @precondition(
        lambda self: any(
            r.contents or r.failures for r in self.reference.batches.values()
        )
    )
    @rule(data=st.data())
    def contradict_a_file(self, data: st.DataObject) -> None:
        """The same file again with the other outcome (or other content): CONTRACT §2
        "One file, one outcome" — a failure for a file whose content the batch
        holds, or content under another storage id for a file that failed or holds
        content."""
        ids = sorted(b for b, r in self.reference.batches.items() if r.contents or r.failures)
        batch_id = data.draw(st.sampled_from(ids))
        ref = self.reference.batches[batch_id]
        files = sorted({c.file_upload_id for c in ref.contents} | set(ref.failures))
        fuid = data.draw(st.sampled_from(files))
        cid = f"contra-{self.commands_run}"
        cmd: AnyCommand
        if data.draw(st.booleans()):
            cmd = RecordValidationFailure(
                batch_id=batch_id,
                correlation_id=cid,
                file_upload_id=fuid,
                original_file_name="again.txt",
                error_code="LATE_FAILURE",
            )
        else:
            cmd = ProvisionContent(
                batch_id=batch_id,
                correlation_id=cid,
                text_storage_id=f"other-{self.commands_run}",
                file_upload_id=fuid,
                original_file_name="again.txt",
            )
        self.run(data.draw(st.integers(0, INSTANCES - 1)), [cmd])

    # -- invariants
    @invariant()
    def matches_reference(self) -> None:
        svc = self.services[0]
        for batch_id in BATCH_IDS:
            aggregate_id = Batch.create_id(batch_id)
            records = svc.recorder.select_events(aggregate_id)
            assert [r.originator_version for r in records] == list(range(1, len(records) + 1))
            events = list(svc.events.get(aggregate_id))
            ref = self.reference.batches.get(batch_id)
            if ref is None or not ref.events:
                assert events == []
                assert svc.get_batch(batch_id) is None
                continue
            assert [event_dict(e) for e in events] == [r.as_dict() for r in ref.events]
            check_stream_invariants(batch_id, events)
            want = reference_state(ref)
            rebuilt = replay(events)
            assert rebuilt is not None
            assert aggregate_state(rebuilt) == want
            for instance in self.services:
                live = instance.get_batch(batch_id)
                assert live is not None
                assert aggregate_state(live) == want


def outcome(result: Result) -> RefResult:
    return RefResult(result.outcome, result.events, result.reason)


class PostgresBatchMachine(BatchMachine):
    """The same machine on real PostgreSQL, a fresh schema per example."""

    settings_: Settings

    def open_store(self) -> None:
        self.settings_ = make_settings(
            BATCH_TIMEOUT_SECONDS=str(TIMEOUT_SECONDS),
            PENDING_TTL_SECONDS=str(PENDING_TTL_SECONDS),
        )

    def new_service(self) -> BatchService:
        svc = Bootstrap(self.settings_).batch_service(clock=self.clock)
        assert svc.timeout_seconds == TIMEOUT_SECONDS
        assert svc.pending_ttl_seconds == PENDING_TTL_SECONDS
        return svc

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            drop_schema(self.settings_)


PROFILE = settings.default
assert PROFILE is not None

TestBatchMachineInMemory = BatchMachine.TestCase
TestBatchMachineInMemory.settings = settings(PROFILE, stateful_step_count=40)

TestBatchMachinePostgres = PostgresBatchMachine.TestCase
TestBatchMachinePostgres.settings = settings(
    PROFILE,
    # Real PostgreSQL costs ~1.5 s an example: a quarter of the profile, at most 25.
    max_examples=max(5, min(25, PROFILE.max_examples // 4)),
    stateful_step_count=30,
)


# ------------------------------------------------------------ other checks


@pytest.mark.parametrize("slots", [150])
def test_loading_from_a_snapshot_equals_a_full_replay(slots: int) -> None:
    """Past the snapshot interval (100), a fresh instance loads via the snapshot
    and must see the same batch as a replay of every stored event."""
    store = SharedPopoStore()
    clock = ManualClock()
    first = SharedPopoBatchService(store, clock=clock)
    first.register(
        RegisterBatch(batch_id="big", correlation_id="c", essay_ids=[f"e{i}" for i in range(slots)])
    )
    for i in range(slots - 1):
        clock.advance(1)
        first.provision_content(
            ProvisionContent(
                batch_id="big",
                correlation_id=f"c{i}",
                text_storage_id=f"t{i}",
                file_upload_id=f"f{i}",
                original_file_name="x",
            )
        )
    aggregate_id = Batch.create_id("big")
    assert first.snapshots is not None
    snaps = list(first.snapshots.get(aggregate_id))
    assert [s.originator_version for s in snaps] == [100]
    fresh = SharedPopoBatchService(store, clock=clock)
    loaded = fresh.get_batch("big")
    rebuilt = replay(list(fresh.events.get(aggregate_id)))
    assert loaded is not None and rebuilt is not None
    assert aggregate_state(loaded) == aggregate_state(rebuilt)
    assert loaded.version == slots
    assert len(loaded.available_slots) == 1
    # And it keeps deciding correctly from there.
    result = fresh.provision_content(
        ProvisionContent(
            batch_id="big",
            correlation_id="last",
            text_storage_id="t-last",
            file_upload_id="f-last",
            original_file_name="x",
        )
    )
    assert (result.outcome, result.events) == ("recorded", 2)
    kinds: Counter[str] = Counter(type(e).__name__ for e in fresh.events.get(aggregate_id))
    assert kinds == {"BatchRegistered": 1, "SlotAssigned": slots, "BatchCompleted": 1}


# ------------------------------------- the machine can fail: the old decisions


class PreRuleBatch(Batch):
    """The aggregate's content and failure decisions as they were before CONTRACT §2
    "One file, one outcome" (a mutant: the machine above must catch it)."""

    def provision_content(
        self, text_storage_id: str, file_upload_id: str, name: str, now: Any, cid: str
    ) -> None:
        if self.knows_content(text_storage_id):
            return
        if not self.is_registered and not self.is_closed:
            self._pended(
                batch_id=self.batch_id,
                text_storage_id=text_storage_id,
                file_upload_id=file_upload_id,
                original_file_name=name,
                correlation_id=cid,
                timestamp=now,
            )
            return
        self._place(text_storage_id, file_upload_id, name, now, cid)
        self._complete_if_done(now, cid)

    def record_validation_failure(
        self, file_upload_id: str, name: str, error_code: str, now: Any, cid: str
    ) -> None:
        if file_upload_id in self._failures:
            return
        self._failure_recorded(
            batch_id=self.batch_id,
            file_upload_id=file_upload_id,
            original_file_name=name,
            error_code=error_code,
            correlation_id=cid,
            timestamp=now,
        )
        self._complete_if_done(now, cid)


class PreRuleService(SharedPopoBatchService):
    def _checkout(self, batch_id: str, commands: Any, fresh: bool = False) -> Any:
        batch, cached = super()._checkout(batch_id, commands, fresh)
        batch.__class__ = PreRuleBatch
        return batch, cached


class PreRuleMachine(BatchMachine):
    def new_service(self) -> BatchService:
        return PreRuleService(
            self.store,
            clock=self.clock,
            timeout_seconds=TIMEOUT_SECONDS,
            pending_ttl_seconds=PENDING_TTL_SECONDS,
        )


def test_the_machine_fails_on_the_decisions_before_the_rule() -> None:
    """The reference model is not a copy of the aggregate: the old behaviour (a
    file counted twice, filling two slots, failures after close) is caught."""
    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            PreRuleMachine,
            settings=settings(
                max_examples=200,
                stateful_step_count=40,
                deadline=None,
                database=None,
                phases=[Phase.generate],  # found is enough; no need to shrink
                suppress_health_check=list(HealthCheck),
            ),
        )


def test_a_stale_cached_batch_does_not_hide_a_file_conflict() -> None:
    """Instance A caches the closed batch; instance B then records late content of
    file u9 (excess). A failure for u9 at A contradicts it: A must not call it a
    no-op from its stale copy ("after close a new failure changes nothing")."""
    store = SharedPopoStore()
    clock = ManualClock()
    a, b = (SharedPopoBatchService(store, clock=clock) for _ in range(2))
    a.register(RegisterBatch(batch_id="s", correlation_id="c", essay_ids=["e1"]))
    a.provision_content(
        ProvisionContent(
            batch_id="s",
            correlation_id="c",
            text_storage_id="t1",
            file_upload_id="u1",
            original_file_name="x",
        )
    )
    late = ProvisionContent(
        batch_id="s",
        correlation_id="c",
        text_storage_id="t9",
        file_upload_id="u9",
        original_file_name="x",
    )
    assert b.provision_content(late).outcome == "recorded"  # excess BATCH_CLOSED
    failure = RecordValidationFailure(
        batch_id="s",
        correlation_id="c",
        file_upload_id="u9",
        original_file_name="x",
        error_code="E",
    )
    result = a.record_validation_failure(failure)
    assert (result.outcome, result.reason) == ("rejected", "CONFLICTING_FILE_OUTCOME")
    a.close()
    b.close()
