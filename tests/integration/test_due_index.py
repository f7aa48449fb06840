"""The due-batch index in PostgreSQL (infrastructure/postgres/due_index.py) and its
follower: it follows the store, survives a lost Redis, ignores re-deliveries and
stays correct with several followers at once. Real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from eventsourcing.persistence import IntegrityError

from application.commands import ProvisionContent, RegisterBatch
from application.service import BatchService
from infrastructure.bootstrap import Bootstrap
from infrastructure.postgres.due_index import DueIndex
from infrastructure.processes.due_index import DueIndexFollower
from infrastructure.processes.sweep import sweep_once
from infrastructure.settings import Settings
from projections.due_index import DueEntry, due_entry_of
from tests.conftest import ManualClock, drop_redis_prefix
from tests.integration.slot_support import busy_workload, head
from tests.support.followers import ProjectorThread


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def container(test_settings: Settings, clock: ManualClock) -> Iterator[Bootstrap]:
    with Bootstrap(test_settings, clock=clock) as built:
        yield built


def expected_entries(service: BatchService, batch_ids: list[str]) -> dict[str, DueEntry]:
    found = {}
    for b in batch_ids:
        batch = service.get_batch(b)
        if batch is not None and due_entry_of(batch) != DueEntry():
            found[b] = due_entry_of(batch)
    return found


async def follow_until(followers: list[DueIndexFollower], index: DueIndex, target: int) -> None:
    """Run the followers until the index reaches ``target`` (bounded by the test timeout)."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(f.run(stop)) for f in followers]
    try:
        while await asyncio.to_thread(index.position) < target:
            for task in tasks:
                if task.done():
                    task.result()  # a follower failed: raise its error
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def test_the_index_follows_the_store(container: Bootstrap, clock: ManualClock) -> None:
    service = container.service
    ids = busy_workload(service, clock, batches=30, rounds=800)
    follower = container.due_follower(page_size=50)
    asyncio.run(follow_until([follower], container.due_index, head(service)))
    assert container.due_index.entries() == expected_entries(service, ids)
    assert container.due_index.entries()  # the workload leaves open and waiting batches
    assert follower.applied == head(service)


def test_a_due_batch_is_found_after_redis_lost_everything(
    test_settings: Settings, container: Bootstrap, clock: ManualClock
) -> None:
    service = container.service
    service.execute(
        [
            RegisterBatch(batch_id="open", correlation_id="c", essay_ids=["e1", "e2"]),
            ProvisionContent(
                batch_id="early",
                correlation_id="c",
                text_storage_id="t1",
                file_upload_id="f1",
                original_file_name="a",
            ),
        ]
    )
    running = ProjectorThread(test_settings, service=service, view=container.view).start()
    running.wait_for(head(service))
    running.stop()
    asyncio.run(follow_until([container.due_follower()], container.due_index, head(service)))
    drop_redis_prefix(test_settings)  # the cache is gone; no projector runs
    assert container.view.position() is None
    index = container.due_index
    assert sweep_once(service, index) == []  # nothing due yet
    clock.advance(max(service.timeout_seconds, service.pending_ttl_seconds))
    assert index.due_for_timeout(clock.now) == ["open"]
    assert index.due_for_expiry(clock.now, service.pending_ttl_seconds) == ["early"]
    closed = {r.command.batch_id for r in sweep_once(service, index) if r.outcome == "recorded"}
    assert closed == {"open", "early"}
    assert service.get_batch("open").status == "timed_out"  # type: ignore[union-attr]
    assert service.get_batch("early").status == "expired"  # type: ignore[union-attr]
    asyncio.run(follow_until([container.due_follower()], index, head(service)))
    assert index.entries() == {}  # closed batches leave the index


def test_a_redelivered_page_changes_nothing(container: Bootstrap, clock: ManualClock) -> None:
    service = container.service
    ids = busy_workload(service, clock, batches=10, rounds=200)
    follower = container.due_follower()
    page = service.recorder.select_notifications(start=0, limit=10_000)
    follower.apply(page[:60], 0)
    follower.apply(page[60:], page[59].id)
    before = container.due_index.entries()
    assert before == expected_entries(service, ids)
    with pytest.raises(IntegrityError):  # the same page again
        follower.apply(page[60:], page[59].id)
    with pytest.raises(IntegrityError):  # an older page, as a slow second follower has it
        follower.apply(page[:60], 0)
    assert container.due_index.entries() == before
    assert container.due_index.position() == page[-1].id


def test_two_followers_at_once_stay_correct(
    test_settings: Settings, container: Bootstrap, clock: ManualClock
) -> None:
    """Two instances follow while the store is written: each page goes in once."""
    service = container.service
    with Bootstrap(test_settings) as other:  # a second instance: its own pool and LISTEN
        followers = [container.due_follower(page_size=7), other.due_follower(page_size=5)]

        async def both() -> None:
            stop = asyncio.Event()
            tasks = [asyncio.create_task(f.run(stop)) for f in followers]
            try:
                await asyncio.to_thread(busy_workload, service, clock, 25, 1200, 11)
            finally:
                stop.set()
                await asyncio.gather(*tasks)
            await follow_until(followers, container.due_index, head(service))

        asyncio.run(both())
        ids = [f"b{i:04d}" for i in range(25)]
        assert container.due_index.entries() == expected_entries(service, ids)
        assert other.due_index.position() == head(service)


def test_the_index_tables_are_created_once_by_containers_starting_together(
    test_settings: Settings,
) -> None:
    built = [Bootstrap(test_settings) for _ in range(3)]
    errors: list[BaseException] = []

    def start(b: Bootstrap) -> None:
        try:
            assert b.due_index.position() == 0
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start, args=(b,)) for b in built]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for b in built:
            b.close()
    assert errors == []
