"""The Redis slot view against real Redis and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from eventsourcing.persistence import Tracking
from eventsourcing.tests import persistence as library_tests
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings

from application.commands import RegisterBatch
from application.service import BatchService
from infrastructure.bootstrap import Bootstrap
from infrastructure.redis.client import node_clients
from infrastructure.redis.view import PositionLost, RedisSlotView
from infrastructure.settings import Settings
from projections.slot_view import VersionGap
from tests.conftest import ManualClock, drop_redis_prefix, drop_schema, make_settings
from tests.integration.slot_support import (
    busy_workload,
    everything,
    expected_models,
    flush,
    head,
    run_steps,
    view_models,
)
from tests.strategies import PENDING_TTL_SECONDS, TIMEOUT_SECONDS, Step, workloads
from tests.support.followers import ProjectorThread
from tests.support.redis_cluster import LocalRedisCluster


@pytest.fixture
def test_settings(read_model_settings: Settings) -> Settings:
    """Every test here runs on a single Redis and on a Redis Cluster."""
    return read_model_settings


class TestRedisSlotViewIsATrackingRecorder(library_tests.TrackingRecorderTestCase):
    def create_recorder(self) -> RedisSlotView:
        settings = make_settings()
        self.addCleanup(drop_redis_prefix, settings)
        view = RedisSlotView.from_settings(settings)
        self.addCleanup(view.close)
        return view


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def clocked(test_settings: Settings, clock: ManualClock) -> Iterator[BatchService]:
    """A BatchService with the strategies' timeouts and a manual clock."""
    s = test_settings.model_copy(
        update={
            "batch_timeout_seconds": TIMEOUT_SECONDS,
            "pending_ttl_seconds": PENDING_TTL_SECONDS,
        }
    )
    svc = Bootstrap(s).batch_service(clock=clock)
    yield svc
    svc.close()


def replay(service: BatchService, view: RedisSlotView, after: int | None = None) -> int | None:
    """Apply every stored event to the view directly, in one pipeline."""
    notifications = service.recorder.select_notifications(start=1, limit=100_000)
    events = [
        (service.mapper.to_domain_event(n), Tracking(service.name, n.id)) for n in notifications
    ]
    return view.apply(events, after)


@pytest.fixture
def projector(test_settings: Settings, clocked: BatchService) -> Iterator[ProjectorThread]:
    p = ProjectorThread(test_settings, service=clocked).start()
    yield p
    p.stop()


@hsettings(
    max_examples=40,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=workloads())
def test_projected_keys_equal_the_aggregates_read_model(
    clocked: BatchService, clock: ManualClock, projector: ProjectorThread, steps: list[Step]
) -> None:
    """One live projector follows every example; each example has its own batches."""
    suffix = f"-{uuid.uuid4().hex[:8]}"
    run_steps(clocked, clock, steps, suffix)
    projector.wait_for(head(clocked), timeout=10)
    ids = [b + suffix for b in ("b-alpha", "b-beta", "b-gamma")]
    assert view_models(projector.projector.view, ids) == expected_models(clocked, ids)


def test_redelivered_and_replayed_events_change_nothing(
    clocked: BatchService, clock: ManualClock, view: RedisSlotView
) -> None:
    ids = busy_workload(clocked, clock, batches=12, rounds=300)
    position = replay(clocked, view)
    assert position == head(clocked)
    before = everything(view)
    assert view_models(view, ids) == expected_models(clocked, ids)
    assert replay(clocked, view, after=position) == position  # the whole log again
    assert replay(clocked, view) == position  # and again, as a fresh projector would
    assert everything(view) == before


def test_a_version_gap_is_refused_and_moves_nothing(
    clocked: BatchService, clock: ManualClock, view: RedisSlotView
) -> None:
    busy_workload(clocked, clock, batches=3, rounds=40)
    notifications = clocked.recorder.select_notifications(start=1, limit=1000)
    events: list[tuple[Any, Tracking]] = [
        (clocked.mapper.to_domain_event(n), Tracking(clocked.name, n.id)) for n in notifications
    ]
    first = events[0][0].batch_id
    later = next(i for i, (e, _) in enumerate(events) if e.batch_id == first and i > 0)
    view.apply(events[:1], None)
    with pytest.raises(VersionGap):  # the first event's successor is skipped
        view.apply([events[0], *events[later + 1 :]], events[0][1].notification_id)
    assert view.position() == events[0][1].notification_id
    assert view.read_batch(first) is not None and view.read_batch(first).version == 1  # type: ignore[union-attr]


def test_a_lost_position_is_noticed_on_the_next_write(
    clocked: BatchService, clock: ManualClock, view: RedisSlotView
) -> None:
    busy_workload(clocked, clock, batches=3, rounds=40)
    position = replay(clocked, view)
    flush(view)
    clocked.execute([RegisterBatch(batch_id="late", correlation_id="c", essay_ids=["e1"])])
    last = clocked.recorder.select_notifications(start=head(clocked), limit=1)
    event = (clocked.mapper.to_domain_event(last[0]), Tracking(clocked.name, last[0].id))
    with pytest.raises(PositionLost):
        view.apply([event], position)
    # The position is written after the page's batch writes (each batch under its own
    # hash tag): the event's batch is written (a correct write, which the projector's
    # replay from 0 then finds done), the lost position is not written again.
    assert view.position() is None
    assert set(everything(view)) <= set(view.batch_keys("late"))
    assert view_models(view, ["late"]) == expected_models(clocked, ["late"])


def _script_calls(view: RedisSlotView, subcommand: str) -> int:
    """How often every server of the view has run ``SCRIPT <subcommand>``."""
    return sum(
        int(c.info("commandstats").get(f"cmdstat_script|{subcommand}", {}).get("calls", 0))
        for c in node_clients(view.client)
    )


def test_a_page_is_one_pipeline_and_a_server_that_lost_the_scripts_is_given_them(
    clocked: BatchService, clock: ManualClock, view: RedisSlotView
) -> None:
    ids = busy_workload(clocked, clock, batches=12, rounds=300)
    asked = _script_calls(view, "exists")
    position = replay(clocked, view)
    assert _script_calls(view, "exists") == asked  # no SCRIPT EXISTS round trip per page
    for client in node_clients(view.client):
        client.script_flush()  # (a restarted server, or a replica promoted)
    loaded = _script_calls(view, "load")
    ids.append("late")
    clocked.execute([RegisterBatch(batch_id="late", correlation_id="c", essay_ids=["e1"])])
    clocked.execute([RegisterBatch(batch_id=ids[0], correlation_id="d", essay_ids=["x1"])])
    fresh = clocked.recorder.select_notifications(
        start=position, limit=10, inclusive_of_start=False
    )
    events = [(clocked.mapper.to_domain_event(n), Tracking(clocked.name, n.id)) for n in fresh]
    assert view.apply(events, position) == head(clocked)
    assert _script_calls(view, "load") > loaded  # loaded again where they were missing
    assert view.position() == head(clocked)
    assert view_models(view, ids) == expected_models(clocked, ids)


def test_batch_ids_lists_exactly_this_prefixes_batches(
    clocked: BatchService, clock: ManualClock, view: RedisSlotView
) -> None:
    ids = busy_workload(clocked, clock, batches=30, rounds=200)
    replay(clocked, view)
    other = RedisSlotView(view.client, view.prefix + "other:")
    other.client.hset("{}batch:{{x}}:summary".format(view.prefix + "other:"), "version", "1")
    shadow = view.shadow("tok")
    shadow.client.hset(shadow.batch_keys("ghost")[0], "version", "1")
    stored = {b for b in ids if clocked.get_batch(b) is not None}
    assert set(view.batch_ids()) == stored
    assert set(other.batch_ids()) == {"x"}


def test_on_a_cluster_each_page_is_on_a_replica_before_the_position_moves(
    redis_cluster: LocalRedisCluster, clock: ManualClock
) -> None:
    """WAIT ends each primary's group of writes: when ``apply`` returns, every primary
    written has had its replica acknowledge all of it (the primary's own record of
    the replica's offset has caught up). Without WAIT the replica acknowledges only
    once a second, so right after the page the primary's record lags behind by the
    page (kilobytes)."""
    s = make_settings(REDIS_URL=redis_cluster.url)
    service = Bootstrap(s).batch_service(clock=clock)
    view = RedisSlotView.from_settings(s)
    try:
        ids = busy_workload(service, clock, batches=30, rounds=200)
        primaries = {redis_cluster.primary_of(view.batch_keys(b)[0]) for b in ids}
        assert len(primaries) == 3  # the page goes to every primary
        clients = [redis_cluster.client(port) for port in primaries]
        before = [int(c.info("replication")["master_repl_offset"]) for c in clients]
        replay(service, view)
        after = [c.info("replication") for c in clients]
        for c in clients:
            c.close()
        for start, info in zip(before, after, strict=True):
            acknowledged, offset = int(info["slave0"]["offset"]), int(info["master_repl_offset"])
            assert offset - start > 1000, info  # the page's writes went through this primary
            # All of it acknowledged; at most a keepalive (SELECT + PING, 37 bytes) may
            # have followed the page into the stream before INFO was asked.
            assert offset - acknowledged <= 37, info
    finally:
        view.close()
        service.close()
        drop_schema(s)
        drop_redis_prefix(s)


def test_redis_cluster_true_with_a_plain_url_reaches_every_primary(
    redis_cluster: LocalRedisCluster,
) -> None:
    s = make_settings(
        REDIS_CLUSTER="true", REDIS_URL=f"redis://127.0.0.1:{redis_cluster.primaries()[0]}/0"
    )
    view = RedisSlotView.from_settings(s)
    try:
        assert view.cluster
        assert sorted(
            c.connection_pool.connection_kwargs["port"] for c in node_clients(view.client)
        ) == sorted(redis_cluster.primaries())
        view.advance_position(7)
        assert view.position() == 7
    finally:
        drop_redis_prefix(s)
        view.close()
