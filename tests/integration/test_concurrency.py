"""Concurrent writers on real PostgreSQL: optimistic versioning must keep the
Batch stream exact (one assignment per content, no lost write, no gap)."""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from application.commands import ProvisionContent, RegisterBatch
from application.service import BatchService, Result
from domain import Batch
from infrastructure.bootstrap import Bootstrap
from infrastructure.settings import Settings
from tests.conftest import drop_schema, make_settings

THREADS = 20
PROCESSES = 4
PER_PROCESS = 10


def content(batch_id: str, tsid: str, cid: str) -> ProvisionContent:
    return ProvisionContent(
        batch_id=batch_id,
        correlation_id=cid,
        text_storage_id=tsid,
        file_upload_id=f"f-{tsid}",
        original_file_name=f"{tsid}.txt",
    )


def stored(svc: BatchService, batch_id: str) -> list[Any]:
    aggregate_id = Batch.create_id(batch_id)
    records = svc.recorder.select_events(aggregate_id)
    versions = [r.originator_version for r in records]
    assert versions == list(range(1, len(records) + 1)), f"gap or duplicate: {versions}"
    return list(svc.events.get(aggregate_id))


def kinds(events: list[Any]) -> Counter[str]:
    return Counter(type(e).__name__ for e in events)


def race(n: int, work: Callable[[int], Result]) -> list[Result]:
    """Run ``work(i)`` in n threads released at the same instant; re-raise any error."""
    barrier = threading.Barrier(n)
    results: list[Result | None] = [None] * n
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a writer hung"
    assert errors == [], errors
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


@pytest.fixture
def pg_settings() -> Iterator[Settings]:
    """A fresh PostgreSQL schema (these tests need no Redis)."""
    s = make_settings()
    yield s
    drop_schema(s)


@pytest.fixture
def service(pg_settings: Settings) -> Iterator[BatchService]:
    svc = Bootstrap(pg_settings).batch_service()
    yield svc
    svc.close()


@pytest.fixture
def registered(service: BatchService) -> Iterator[str]:
    batch_id = "b-race"
    result = service.register(
        RegisterBatch(batch_id=batch_id, correlation_id="reg", essay_ids=["e1", "e2", "e3"])
    )
    assert result.outcome == "recorded"
    yield batch_id


# ------------------------------------------------------------------ threads


@pytest.mark.parametrize("shared", [True, False], ids=["one-instance", "instance-per-thread"])
def test_same_content_from_20_threads_is_assigned_once(
    pg_settings: Settings, service: BatchService, registered: str, shared: bool
) -> None:
    conflicts = Counter[str]()
    lock = threading.Lock()

    def on_conflict() -> None:
        with lock:
            conflicts["n"] += 1

    instances: list[BatchService] = []
    try:
        if shared:
            one = Bootstrap(pg_settings).batch_service(on_conflict=on_conflict)
            instances = [one] * THREADS
        else:
            # One connection each: 20 instances must not exhaust the server's clients.
            small = Bootstrap(pg_settings.model_copy(update={"database_pool_size": 1}))
            for _ in range(THREADS):
                instances.append(small.batch_service(on_conflict=on_conflict))
        results = race(
            THREADS,
            lambda i: instances[i].provision_content(content(registered, "t-same", f"c{i}")),
        )
    finally:
        for svc in set(instances):
            svc.close()

    outcomes = Counter(r.outcome for r in results)
    assert outcomes == {"recorded": 1, "noop": THREADS - 1}, (outcomes, conflicts)
    events = stored(service, registered)
    assert kinds(events) == {"BatchRegistered": 1, "SlotAssigned": 1}
    (assigned,) = [e for e in events if type(e).__name__ == "SlotAssigned"]
    assert (assigned.essay_id, assigned.text_storage_id) == ("e1", "t-same")
    winner = next(r for r in results if r.outcome == "recorded")
    assert assigned.correlation_id == winner.command.correlation_id
    # The batch still takes new content in the next free slot.
    more = service.provision_content(content(registered, "t-next", "after"))
    assert more.outcome == "recorded"
    assert service.get_batch(registered).assignments == {  # type: ignore[union-attr]
        "e1": "t-same",
        "e2": "t-next",
    }


def test_distinct_content_from_20_threads_fills_every_slot_once(
    pg_settings: Settings, service: BatchService
) -> None:
    batch_id = "b-fill"
    slots = [f"e{i}" for i in range(THREADS - 5)]
    service.register(RegisterBatch(batch_id=batch_id, correlation_id="reg", essay_ids=slots))
    one = Bootstrap(pg_settings).batch_service()
    try:
        results = race(THREADS, lambda i: one.provision_content(content(batch_id, f"t{i}", "c")))
    finally:
        one.close()
    assert Counter(r.outcome for r in results) == {"recorded": THREADS}
    events = stored(service, batch_id)
    assert kinds(events) == {
        "BatchRegistered": 1,
        "SlotAssigned": len(slots),
        "BatchCompleted": 1,
        "ExcessContentProvisioned": 5,
    }
    assigned = [e for e in events if type(e).__name__ == "SlotAssigned"]
    assert [e.essay_id for e in assigned] == slots
    excess = {e.text_storage_id for e in events if type(e).__name__ == "ExcessContentProvisioned"}
    assert {e.text_storage_id for e in assigned} | excess == {f"t{i}" for i in range(THREADS)}
    assert not {e.text_storage_id for e in assigned} & excess


# ---------------------------------------------------------------- processes


def _process_worker(
    settings: Settings, batch_id: str, tsids: list[str], barrier: Any, out: Any
) -> None:
    """One OS process: its own BatchService, one command per append."""
    conflicts = 0

    def on_conflict() -> None:
        nonlocal conflicts
        conflicts += 1

    svc = Bootstrap(settings).batch_service(on_conflict=on_conflict)
    try:
        svc.get_batch(batch_id)  # warm the pool before the start line
        barrier.wait(timeout=60)
        outcomes = [
            svc.provision_content(content(batch_id, tsid, f"p-{tsid}")).outcome for tsid in tsids
        ]
        out.put(("ok", outcomes, conflicts))
    except BaseException as e:
        out.put(("error", repr(e), conflicts))
    finally:
        svc.close()


def test_four_processes_fill_every_slot_exactly_once(
    pg_settings: Settings, service: BatchService
) -> None:
    batch_id = "b-procs"
    own = [[f"t{p}-{i}" for i in range(PER_PROCESS)] for p in range(PROCESSES)]
    # Each process also re-sends two files of its neighbour: cross-process duplicates.
    work = [own[p] + own[(p + 1) % PROCESSES][:2] for p in range(PROCESSES)]
    slots = [f"e{i}" for i in range(PROCESSES * PER_PROCESS)]
    service.register(RegisterBatch(batch_id=batch_id, correlation_id="reg", essay_ids=slots))

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_process_worker, args=(pg_settings, batch_id, work[p], barrier, out))
        for p in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    reports = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert [r for r in reports if r[0] != "ok"] == []

    outcomes = Counter(o for _, os_, _ in reports for o in os_)
    distinct = PROCESSES * PER_PROCESS
    assert outcomes == {"recorded": distinct, "noop": 2 * PROCESSES}

    events = stored(service, batch_id)  # versions 1..n, no gap
    assert kinds(events) == {"BatchRegistered": 1, "SlotAssigned": distinct, "BatchCompleted": 1}
    assert len(events) == distinct + 2
    assigned = [e for e in events if type(e).__name__ == "SlotAssigned"]
    assert [e.essay_id for e in assigned] == slots  # every slot once, in order
    assert sorted(e.text_storage_id for e in assigned) == sorted(t for ts in own for t in ts)
    assert type(events[-1]).__name__ == "BatchCompleted"
    assert events[-1].outcome == "complete"
    assert events[-1].missing_essay_ids == []
    batch = service.get_batch(batch_id)
    assert batch is not None and batch.status == "completed" and batch.version == len(events)


# ------------------------------------------------- a poll that loses one race


def test_a_poll_that_loses_the_race_on_one_batch_retries_together_on_fresh_state(
    pg_settings: Settings,
) -> None:
    """Two instances share batches (content keyed by file reaches several workers).
    Instance A has every batch cached; B appends to one of them; A's next poll loses
    the race on that batch. Every command still lands exactly once, and the retry is
    one more shared append on fresh state, not one append per batch of the poll."""
    appends: list[int] = []
    conflicts: list[int] = []
    a = Bootstrap(pg_settings).batch_service(on_conflict=lambda: conflicts.append(1))
    b = Bootstrap(pg_settings).batch_service()
    batch_ids = [f"shared-{n}" for n in range(8)]
    try:
        a.execute(
            [
                RegisterBatch(batch_id=i, correlation_id="r", essay_ids=["e1", "e2", "e3"])
                for i in batch_ids
            ]
        )
        b.provision_content(content(batch_ids[3], "t-b", "from-b"))  # A's copy is now stale
        save = a.save

        def counting_save(*objs: Any, **kwargs: Any) -> Any:
            appends.append(len(objs))
            return save(*objs, **kwargs)

        a.save = counting_save  # type: ignore[method-assign]
        results = a.execute([content(i, f"t-a-{i}", "from-a") for i in batch_ids])
    finally:
        a.close()
        b.close()
    assert [r.outcome for r in results] == ["recorded"] * len(batch_ids)
    assert conflicts == [1]
    # The first shared append (all 8) lost; the second, on fresh state, took all 8.
    assert appends == [len(batch_ids), len(batch_ids)]
    check = Bootstrap(pg_settings).batch_service()
    try:
        events = stored(check, batch_ids[3])  # versions 1..n: no gap, no duplicate
        assert [e.text_storage_id for e in events if type(e).__name__ == "SlotAssigned"] == [
            "t-b",
            f"t-a-{batch_ids[3]}",
        ]
        for i in batch_ids:
            assert kinds(stored(check, i))["SlotAssigned"] == (2 if i == batch_ids[3] else 1)
    finally:
        check.close()
