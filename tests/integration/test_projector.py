"""The projector and the rebuild against real Redis and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from application.commands import RegisterBatch
from application.service import BatchService
from infrastructure.bootstrap import Bootstrap
from infrastructure.redis.client import connect, node_clients
from infrastructure.redis.view import RedisSlotView
from infrastructure.settings import Settings
from projections.slot_view import ReadModel
from tests.conftest import ManualClock
from tests.integration.slot_support import (
    busy_workload,
    everything,
    expected_models,
    flush,
    head,
    keys_like,
    view_models,
)
from tests.support.followers import ProjectorThread, project_until, rebuilt
from tests.support.poll import eventually


@pytest.fixture
def test_settings(read_model_settings: Settings) -> Settings:
    """Every test here runs on a single Redis and on a Redis Cluster."""
    return read_model_settings


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def clocked(test_settings: Settings, clock: ManualClock) -> Iterator[BatchService]:
    svc = Bootstrap(test_settings).batch_service(clock=clock)
    yield svc
    svc.close()


def all_ids(view: RedisSlotView, ids: list[str]) -> list[str]:
    return sorted(set(ids) | set(view.batch_ids()))


def assert_exact(service: BatchService, view: RedisSlotView, ids: list[str]) -> None:
    ids = all_ids(view, ids)
    assert view_models(view, ids) == expected_models(service, ids)
    # The view holds the public read model only: the due-batch index is in PostgreSQL.
    assert keys_like(view, "batchslot:index:*") == []


def test_stopped_mid_stream_and_restarted_without_gap_or_double_count(
    test_settings: Settings, clocked: BatchService, clock: ManualClock, view: RedisSlotView
) -> None:
    ids = busy_workload(clocked, clock, batches=40, rounds=1500)
    target = head(clocked)
    first = ProjectorThread(test_settings, service=clocked, page_size=3).start()
    eventually(lambda: (view.position() or 0) > target // 3)
    first.stop()  # while it is busy (it may or may not have reached ``target`` by now)
    stopped_at = view.position() or 0
    assert stopped_at > target // 3
    busy_workload(clocked, clock, batches=40, rounds=300, seed=8)  # more while it is down
    # Mid-stream by construction: the store went on, the stopped projector did not.
    assert (view.position() or 0) == stopped_at < head(clocked)
    view.client.set(view._tracking(), stopped_at // 2)  # an older position: replays are no-ops
    second = ProjectorThread(test_settings, service=clocked, page_size=50).start()
    try:
        second.wait_for(head(clocked), timeout=30)
        assert_exact(clocked, view, ids)
        assert second.projector.replays == 0
    finally:
        second.stop()


def test_redis_connections_killed_mid_stream_are_survived(
    test_settings: Settings, clocked: BatchService, clock: ManualClock, view: RedisSlotView
) -> None:
    ids = busy_workload(clocked, clock, batches=40, rounds=1500)
    name = f"projector-{test_settings.database_schema}"
    client = connect(test_settings, client_name=name)
    victim = RedisSlotView(client, test_settings.redis_key_prefix)
    running = ProjectorThread(test_settings, service=clocked, view=victim, page_size=5).start()
    try:
        eventually(lambda: (view.position() or 0) > head(clocked) // 4)
        killed = 0
        for server in node_clients(view.client):  # every primary of a cluster
            for info in server.client_list():
                if info.get("name") == name:
                    killed += server.client_kill_filter(_id=info["id"])
        assert killed >= 1
        running.wait_for(head(clocked), timeout=30)
        assert_exact(clocked, view, ids)
    finally:
        running.stop()
        client.close()


def test_a_flushed_read_model_is_noticed_while_idle_and_rebuilt_from_zero(
    test_settings: Settings, clocked: BatchService, clock: ManualClock, view: RedisSlotView
) -> None:
    ids = busy_workload(clocked, clock, batches=10, rounds=200)
    running = ProjectorThread(test_settings, service=clocked, watchdog_seconds=0.1).start()
    try:
        running.wait_for(head(clocked))
        before = everything(view)
        flush(view)  # as FLUSHALL would
        eventually(lambda: everything(view) == before)
        assert running.projector.replays >= 1
        assert_exact(clocked, view, ids)
    finally:
        running.stop()


def test_a_flushed_read_model_is_noticed_on_the_next_event(
    test_settings: Settings, clocked: BatchService, clock: ManualClock, view: RedisSlotView
) -> None:
    ids = busy_workload(clocked, clock, batches=10, rounds=200)
    running = ProjectorThread(test_settings, service=clocked, watchdog_seconds=3600).start()
    try:
        running.wait_for(head(clocked))
        flush(view)
        clocked.execute([RegisterBatch(batch_id="after", correlation_id="c", essay_ids=["e"])])
        running.wait_for(head(clocked))
        assert running.projector.replays == 1
        assert_exact(clocked, view, [*ids, "after"])
    finally:
        running.stop()


class _CountedView(RedisSlotView):
    """The real view, counting how often the projector reads its position."""

    reads = 0

    def position(self) -> int | None:
        self.reads += 1
        return super().position()


def test_a_steady_stream_reads_the_position_only_when_idle(
    test_settings: Settings, clocked: BatchService
) -> None:
    view = _CountedView(connect(test_settings), test_settings.redis_key_prefix)
    running = ProjectorThread(test_settings, service=clocked, view=view, watchdog_seconds=3600)
    running.start()
    try:
        for i in range(30):  # thirty appends, each projected before the next
            clocked.execute([RegisterBatch(batch_id=f"s{i}", correlation_id="c", essay_ids=["e"])])
            running.wait_for(head(clocked))
        # Each page's write checks the position itself: none is read after a page (the
        # start reads it once; before, it was read each time the projector caught up).
        assert view.reads <= 2
    finally:
        running.stop()
        view.close()


def test_projector_run_blocks_until_stopped(
    test_settings: Settings, clocked: BatchService, clock: ManualClock, view: RedisSlotView
) -> None:
    ids = busy_workload(clocked, clock, batches=5, rounds=60)
    stop = threading.Event()
    runner = threading.Thread(target=project_until, args=(test_settings, stop))
    runner.start()
    view.wait_for(head(clocked), timeout=10)
    assert runner.is_alive()
    stop.set()
    runner.join(5)
    assert not runner.is_alive()
    assert_exact(clocked, view, ids)


def test_rebuild_equals_live_and_repairs_tampering(
    test_settings: Settings, clocked: BatchService, clock: ManualClock, view: RedisSlotView
) -> None:
    ids = busy_workload(clocked, clock, batches=30, rounds=800)
    running = ProjectorThread(test_settings, service=clocked).start()
    running.wait_for(head(clocked))
    running.stop()
    live = everything(view)
    stored = [b for b in ids if clocked.get_batch(b) is not None]
    view.client.hset(view.batch_keys(stored[0])[0], "assigned", "99")  # a corrupted count
    view.client.delete(*view.batch_keys(stored[1]))  # a lost batch
    view.client.hset(view.batch_keys("ghost")[0], mapping={"status": "open", "version": "3"})
    view.client.delete(view._tracking())
    calls: list[tuple[int, int]] = []
    summary = rebuilt(test_settings, lambda done, total: calls.append((done, total)), page_size=97)
    assert everything(view) == live
    assert (summary.events, summary.batches) == (head(clocked), len(stored))
    assert calls[-1] == (head(clocked), head(clocked)) and len(calls) > 1
    assert keys_like(view, "rebuild:*") == []


def consistent(model: ReadModel) -> bool:
    s = model.summary
    sizes = len(model.available_slots) == int(s["available"])
    sizes = sizes and len(model.assignments) == int(s["assigned"])
    opened = s["status"] == "awaiting_registration" or (
        int(s["assigned"]) + int(s["available"]) == int(s["expected"])
    )
    return sizes and opened


def test_readers_never_see_a_missing_partial_or_older_batch_during_rebuild(
    test_settings: Settings, clocked: BatchService, clock: ManualClock, view: RedisSlotView
) -> None:
    ids = busy_workload(clocked, clock, batches=60, rounds=1500)
    running = ProjectorThread(test_settings, service=clocked).start()
    running.wait_for(head(clocked))
    present = [b for b in ids if view.read_batch(b) is not None]
    done, problems, reads = threading.Event(), list[str](), [0]

    def reader() -> None:
        seen: dict[str, int] = {}
        while not done.is_set():
            for b in present:
                model = view.read_batch(b)
                reads[0] += 1
                if model is None or not consistent(model) or model.version < seen.get(b, 0):
                    problems.append(f"{b}: {model}")
                    return
                seen[b] = model.version

    def writer() -> None:  # the live projector keeps moving some batches ahead
        busy_workload(clocked, clock, batches=60, rounds=600, seed=9)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    try:
        rebuilds = [rebuilt(test_settings, page_size=20) for _ in range(2)]
    finally:
        threads[-1].join()
        done.set()
        for t in threads:
            t.join()
    assert problems == []
    assert reads[0] > 100 and all(r.events > 0 for r in rebuilds)
    running.wait_for(head(clocked), timeout=20)
    running.stop()
    assert_exact(clocked, view, ids)
