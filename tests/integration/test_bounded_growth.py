"""Bounded growth, against real PostgreSQL.

Snapshots: only the latest of a batch is kept, so a full 5,000-slot batch
stores at most 2x the bytes of its events. The sweep after an outage: many
due batches are closed in bounded pages of commands, every one of them.
"""

from __future__ import annotations

import psycopg
import pytest

from application.commands import AnyCommand, ProvisionContent, RegisterBatch
from application.service import BatchService, Result
from infrastructure.bootstrap import Bootstrap
from infrastructure.postgres.store import conninfo
from infrastructure.processes.sweep import sweep_once
from infrastructure.settings import Settings
from tests.conftest import ManualClock


def stored_bytes(s: Settings, table: str) -> tuple[int, int]:
    """(rows, bytes of their state) of one of the store's tables."""
    with psycopg.connect(**conninfo(s)) as conn:
        query = "SELECT count(*), coalesce(sum(octet_length(state)), 0) FROM"
        row = conn.execute(f'{query} "{s.database_schema}".{table}').fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_a_full_5000_slot_batch_stores_at_most_twice_its_events(
    test_settings: Settings, service: BatchService
) -> None:
    slots = [f"{i:04d}" + "e" * 124 for i in range(5000)]  # 128-character ids
    service.execute([RegisterBatch(batch_id="full", correlation_id="c", essay_ids=slots)])
    commands: list[AnyCommand] = [
        ProvisionContent(
            batch_id="full",
            correlation_id=f"c{i}",
            text_storage_id=f"{i:04d}" + "t" * 124,
            file_upload_id=f"{i:04d}" + "f" * 124,
            original_file_name=f"{i:04d}" + "n" * 200 + ".docx",
        )
        for i in range(5000)
    ]
    for i in range(0, len(commands), 250):
        service.execute(commands[i : i + 250])
    batch = service.get_batch("full")
    assert batch is not None and batch.status == "completed"
    events, event_bytes = stored_bytes(test_settings, "batchservice_events")
    snapshots, snapshot_bytes = stored_bytes(test_settings, "batchservice_snapshots")
    print(
        f"\n5,000-slot batch: {events} events {event_bytes} B, {snapshots} snapshots "
        f"{snapshot_bytes} B, ratio {(event_bytes + snapshot_bytes) / event_bytes:.2f}"
    )
    assert snapshots == 1
    assert event_bytes + snapshot_bytes <= 2 * event_bytes
    # The kept snapshot is the latest, and a fresh load from it equals the cached state.
    fresh = Bootstrap(test_settings).batch_service()
    try:
        loaded = fresh.get_batch("full")
        assert loaded is not None and loaded.version == batch.version
        assert loaded.status == batch.status and loaded.assignments == batch.assignments
    finally:
        fresh.close()


def test_the_sweep_closes_many_due_batches_in_bounded_pages(
    test_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock()
    service = Bootstrap(test_settings).batch_service(clock=clock)
    try:
        due = [f"due{i:04d}" for i in range(1200)]
        for i in range(0, len(due), 200):
            service.execute(
                [
                    RegisterBatch(batch_id=b, correlation_id="c", essay_ids=["e"])
                    for b in due[i : i + 200]
                ]
            )
        container = Bootstrap(test_settings, service=service)
        index = container.due_index
        follower = container.due_follower()
        page = service.recorder.select_notifications(start=0, limit=10_000)
        follower.apply(page, 0)  # the due-batch index, as its follower keeps it
        clock.advance(service.timeout_seconds + 1)  # after an outage: every batch is due
        calls: list[int] = []
        execute = service.execute

        def counted(commands: list[AnyCommand]) -> list[Result]:
            calls.append(len(commands))
            return execute(commands)

        monkeypatch.setattr(service, "execute", counted)
        results = sweep_once(service, index)
        closed = {r.command.batch_id for r in results if r.outcome == "recorded"}
        assert closed == set(due)
        assert calls == [500, 500, 200]
        fresh = Bootstrap(test_settings).batch_service()
        try:
            for b in due:
                batch = fresh.get_batch(b)
                assert batch is not None and batch.status == "timed_out", b
        finally:
            fresh.close()
    finally:
        service.close()
