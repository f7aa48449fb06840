"""PostgreSQL restored from an older backup, and a Redis AOF that lost its last second.

A restore is simulated by deleting the newest rows of the test schema's events
table (and its snapshots, which a backup would not hold either): the store
then ends at an earlier notification id, while the read model still holds
the later events. Real PostgreSQL and Redis throughout.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from prometheus_client import REGISTRY

from application.commands import RegisterBatch
from application.service import BatchService
from infrastructure.bootstrap import Bootstrap
from infrastructure.postgres.store import conninfo
from infrastructure.redis.view import RedisSlotView
from infrastructure.settings import Settings
from tests.conftest import ManualClock
from tests.integration.slot_support import busy_workload, expected_models, head, view_models
from tests.support.followers import ProjectorThread, rebuilt
from tests.support.poll import eventually


@pytest.fixture
def test_settings(read_model_settings: Settings) -> Settings:
    """Every test here runs on a single Redis and on a Redis Cluster."""
    return read_model_settings


@pytest.fixture
def clocked(test_settings: Settings) -> Iterator[BatchService]:
    svc = Bootstrap(test_settings).batch_service(clock=ManualClock())
    yield svc
    svc.close()


def restore_to(s: Settings, position: int) -> None:
    """As if PostgreSQL were restored from a backup taken at ``position``."""
    with psycopg.connect(**conninfo(s), autocommit=True) as conn:
        schema = s.database_schema
        conn.execute(
            f'DELETE FROM "{schema}".batchservice_events WHERE notification_id > %s', (position,)
        )
        conn.execute(f'DELETE FROM "{schema}".batchservice_snapshots')


def agrees(s: Settings, view: RedisSlotView) -> bool:
    """The read model equals the store (folded by a fresh service, no cache)."""
    fresh = Bootstrap(s).batch_service()
    try:
        ids = sorted(set(view.batch_ids()) | stored_batches(fresh))
        if view_models(view, ids) != expected_models(fresh, ids):
            return False
        return view.position() == head(fresh)
    finally:
        fresh.close()


def stored_batches(service: BatchService) -> set[str]:
    notifications = service.recorder.select_notifications(None, 1_000_000)
    return {service.mapper.to_domain_event(n).batch_id for n in notifications}


def resets(action: str) -> float:
    return REGISTRY.get_sample_value("batchslot_read_model_resets_total", {"action": action}) or 0


def project(s: Settings, service: BatchService) -> None:
    running = ProjectorThread(s, service=service).start()
    running.wait_for(head(service), timeout=30)
    running.stop()


def test_rebuild_after_a_restore_equals_the_store(
    test_settings: Settings, clocked: BatchService, view: RedisSlotView
) -> None:
    busy_workload(clocked, clocked.clock, batches=20, rounds=600)  # type: ignore[arg-type]
    middle = head(clocked)
    clocked.execute([RegisterBatch(batch_id="later", correlation_id="c", essay_ids=["e"])])
    busy_workload(clocked, clocked.clock, batches=20, rounds=300, seed=3)  # type: ignore[arg-type]
    project(test_settings, clocked)
    assert view.position() == head(clocked) > middle
    restore_to(test_settings, middle)
    assert not agrees(test_settings, view)

    rebuilt(test_settings)

    assert view.read_batch("later") is None  # the store no longer has it
    assert view.position() == middle  # moved back
    assert agrees(test_settings, view)


def test_projector_notices_a_read_model_ahead_of_the_store(
    test_settings: Settings, clocked: BatchService, view: RedisSlotView
) -> None:
    busy_workload(clocked, clocked.clock, batches=20, rounds=600)  # type: ignore[arg-type]
    middle = head(clocked)
    busy_workload(clocked, clocked.clock, batches=20, rounds=300, seed=3)  # type: ignore[arg-type]
    project(test_settings, clocked)
    restore_to(test_settings, middle)
    before = resets("rebuild")
    fresh = Bootstrap(test_settings).batch_service()  # a restarted process: no cache
    running = ProjectorThread(test_settings, service=fresh).start()
    try:
        eventually(lambda: agrees(test_settings, view))
        assert running.projector.rebuilds == 1 and resets("rebuild") > before
        # New events after the restore reuse notification ids the view had seen: projected.
        fresh.execute([RegisterBatch(batch_id="new", correlation_id="c", essay_ids=["e"])])
        running.wait_for(head(fresh), timeout=10)
        assert agrees(test_settings, view)
    finally:
        running.stop()
        fresh.close()


def test_running_projector_notices_a_restore_while_idle(
    test_settings: Settings, clocked: BatchService, view: RedisSlotView
) -> None:
    busy_workload(clocked, clocked.clock, batches=20, rounds=600)  # type: ignore[arg-type]
    middle = head(clocked)
    busy_workload(clocked, clocked.clock, batches=20, rounds=300, seed=3)  # type: ignore[arg-type]
    running = ProjectorThread(test_settings, service=clocked, ahead_check_seconds=0.2).start()
    try:
        running.wait_for(head(clocked), timeout=30)
        restore_to(test_settings, middle)
        eventually(lambda: agrees(test_settings, view))
        assert running.projector.rebuilds == 1
    finally:
        running.stop()


def test_projector_notices_a_position_moved_back_while_idle(
    test_settings: Settings, clocked: BatchService, view: RedisSlotView
) -> None:
    """An AOF that lost its last second: the last writes (and the position) are gone."""
    busy_workload(clocked, clocked.clock, batches=10, rounds=200)  # type: ignore[arg-type]
    middle = head(clocked)
    clocked.execute([RegisterBatch(batch_id="last", correlation_id="c", essay_ids=["e"])])
    before = resets("replay")
    running = ProjectorThread(test_settings, service=clocked, watchdog_seconds=0.1).start()
    try:
        running.wait_for(head(clocked), timeout=30)
        view.client.delete(*view.batch_keys("last"))  # the lost second: its last write
        view.client.set(view._tracking(), middle)  # and the position it had then
        eventually(lambda: view.read_batch("last") is not None)
        assert running.projector.replays >= 1 and resets("replay") > before
        assert agrees(test_settings, view)
    finally:
        running.stop()
