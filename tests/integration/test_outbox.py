"""The outbox against real PostgreSQL and a real Kafka-protocol broker (Tansu).

Each test publishes to its own topics, reads ``batch.events.v1`` from the
beginning, deduplicates on ``event_id`` (as the contract tells consumers to)
and compares with the event store: exactly its events, per batch in stream order.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings

from application.commands import ProvisionContent, RegisterBatch
from application.service import BatchService
from infrastructure.bootstrap import Bootstrap
from infrastructure.kafka.clients import make_consumer
from infrastructure.kafka.local_broker import LocalBroker
from infrastructure.postgres.listen import Listener
from infrastructure.processes import outbox as outbox_module
from infrastructure.processes.outbox import Outbox
from infrastructure.settings import Settings
from projections.envelope import envelope_of
from tests.conftest import ManualClock, drop_schema, make_settings
from tests.strategies import PENDING_TTL_SECONDS, TIMEOUT_SECONDS, Step, Tick, workloads
from tests.support.followers import outbox_of, publish_until
from tests.support.poll import eventually_async
from tests.support.scratch import new_tag, topic_env

FAST = {"request_timeout_ms": 2000, "retry_backoff_ms": 50}


def outbox_settings(bootstrap: str) -> Settings:
    return make_settings(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        **topic_env(new_tag(8), sep="."),
        BATCH_TIMEOUT_SECONDS=str(TIMEOUT_SECONDS),
        PENDING_TTL_SECONDS=str(PENDING_TTL_SECONDS),
    )


@pytest.fixture
def env(broker: LocalBroker) -> Iterator[tuple[Settings, BatchService]]:
    s = outbox_settings(broker.bootstrap_servers)
    svc = Bootstrap(s).batch_service(clock=ManualClock())
    yield s, svc
    svc.close()
    drop_schema(s)


def apply(service: BatchService, steps: list[Step]) -> None:
    clock = service.clock
    assert isinstance(clock, ManualClock)
    for step in steps:
        if isinstance(step, Tick):
            clock.advance(step.seconds)
        else:
            service.execute([step])


def stored(service: BatchService) -> list[Any]:
    """Every stored event, in notification order."""
    notifications = service.recorder.select_notifications(None, 1_000_000)
    return [service.mapper.to_domain_event(n) for n in notifications]


async def consume(settings: Settings, count: int, timeout: float = 20.0) -> list[Any]:
    """Read the events topic from the beginning until ``count`` distinct event_ids."""
    consumer = make_consumer(settings, settings.topics.events, group_id=None)
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len({r.headers[0][1] for r in records}) < count:
            assert time.monotonic() < deadline, f"only {len(records)} records of {count}"
            batches = await consumer.getmany(timeout_ms=200)
            for part in batches.values():
                records.extend(part)
        # Anything extra (beyond the duplicates expected): read on to the topic's end.
        ends = await consumer.end_offsets(list(consumer.assignment()))

        async def at_end() -> bool:
            return all([await consumer.position(tp) >= end for tp, end in ends.items()])

        while not await at_end():
            assert time.monotonic() < deadline, f"the topic's end {ends} not reached"
            for part in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(part)
    finally:
        await consumer.stop()
    return records


def check_delivery(service: BatchService, settings: Settings, records: list[Any]) -> Counter[str]:
    """Exactly the store's events; per batch, first occurrences in stream order."""
    events = stored(service)
    expected = {envelope_of(e, settings.source_service).event_id: e for e in events}
    first_seen: dict[str, list[str]] = {}
    seen: Counter[str] = Counter()
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        envelope = json.loads(r.value)
        event_id = envelope["event_id"]
        assert dict(r.headers)["event_id"].decode() == event_id
        assert r.key.decode() == envelope["data"]["batch_id"]
        assert r.value == envelope_of(expected[event_id], settings.source_service).value
        if not seen[event_id]:
            first_seen.setdefault(r.key.decode(), []).append(event_id)
        seen[event_id] += 1
    assert set(seen) == set(expected)
    for batch_id, ids in first_seen.items():
        versions = [expected[i].originator_version for i in ids]
        assert versions == list(range(1, len(versions) + 1)), batch_id
    return seen


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    await eventually_async(predicate, timeout, what="timed out")


async def running(outbox: Outbox, body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body`` while ``outbox.run`` publishes in the background."""
    stop = asyncio.Event()
    task = asyncio.create_task(outbox.run(stop))
    try:
        await body()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@hsettings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=workloads(max_size=40))
def test_random_workload_is_published_exactly_in_stream_order(
    broker: LocalBroker, steps: list[Step]
) -> None:
    s = outbox_settings(broker.bootstrap_servers)
    service = Bootstrap(s).batch_service(clock=ManualClock())
    try:
        apply(service, steps)
        outbox = outbox_of(s, service, page_size=7)  # several pages per workload

        async def scenario() -> None:
            while await outbox.publish_once():
                pass
            await outbox.close()
            assert outbox.lag() == 0
            total = len(stored(service))
            if total:
                seen = check_delivery(service, s, await consume(s, total))
                assert set(seen.values()) == {1}  # no failure, no duplicate

        asyncio.run(scenario())
    finally:
        service.close()
        drop_schema(s)


def busy_workload(service: BatchService, batches: int = 3, files: int = 6) -> None:
    for b in range(batches):
        service.execute([RegisterBatch(batch_id=f"b{b}", correlation_id="c", essay_ids=["e1"])])
        for i in range(files):
            service.execute(
                [
                    ProvisionContent(
                        batch_id=f"b{b}",
                        correlation_id=f"c{i}",
                        text_storage_id=f"t{i}",
                        file_upload_id=f"f{i}",
                        original_file_name="a.txt",
                    )
                ]
            )


class Crash(BaseException):
    """The process dies after the broker acknowledged a page, before tracking it."""


class CrashingOutbox(Outbox):
    def _record(self, notification_id: int) -> None:
        raise Crash


def test_crash_between_publish_and_tracking_republishes_only_that_page(
    env: tuple[Settings, BatchService],
) -> None:
    s, service = env
    busy_workload(service)
    total = len(stored(service))
    assert total > 10

    async def scenario() -> list[Any]:
        first = outbox_of(s, service, page_size=4)
        assert await first.publish_once() == 4
        await first.close()
        crashing = CrashingOutbox(s, service, page_size=4)
        with pytest.raises(Crash):
            await crashing.publish_once()
        await crashing.close()
        assert crashing.position() == 4  # the acknowledged page was never tracked
        restarted = outbox_of(s, service, page_size=4)
        while await restarted.publish_once():
            pass
        await restarted.close()
        assert restarted.lag() == 0 and restarted.position() == total
        return await consume(s, total)

    seen = check_delivery(service, s, asyncio.run(scenario()))
    page = {envelope_of(e, s.source_service).event_id for e in stored(service)[4:8]}
    assert {i for i, n in seen.items() if n > 1} == page
    assert set(seen.values()) == {1, 2}


class _IdleSignal(Listener):
    """The real LISTEN, telling the test when it is listening.

    Its first call connects and LISTENs and returns at once; every later one
    waits for a NOTIFY.
    """

    idle: asyncio.Event

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.calls = 0

    async def heard(self, timeout: float) -> tuple[bool, int | None]:
        self.calls += 1
        if self.calls > 1:
            type(self).idle.set()
        return await super().heard(timeout)


def test_run_wakes_on_notify_and_catches_up(
    env: tuple[Settings, BatchService], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, service = env
    busy_workload(service, batches=1)
    outbox = outbox_of(s, service, idle_timeout=60.0)  # only a NOTIFY can wake it in time
    monkeypatch.setattr(outbox_module, "Listener", _IdleSignal)

    async def body() -> None:
        _IdleSignal.idle = asyncio.Event()
        await until(lambda: outbox.lag() == 0)
        await asyncio.wait_for(_IdleSignal.idle.wait(), 20)  # now idle, LISTEN in place
        await asyncio.to_thread(busy_workload, service, 2)
        # Well within the 60 s idle timeout: only the NOTIFY can have woken it.
        await until(lambda: outbox.lag() == 0, timeout=20)

    asyncio.run(running(outbox, body))
    total = len(stored(service))
    check_delivery(service, s, asyncio.run(consume(s, total)))


def test_concurrent_writers_lose_nothing(env: tuple[Settings, BatchService]) -> None:
    s, service = env
    writers = [Bootstrap(s).batch_service() for _ in range(4)]
    outbox = outbox_of(s, service, page_size=10)

    def write(svc: BatchService, n: int) -> None:
        for i in range(25):
            batch = f"b{(n + i) % 5}"  # shared batches: version conflicts and retries
            svc.execute(
                [
                    ProvisionContent(
                        batch_id=batch,
                        correlation_id=f"w{n}-{i}",
                        text_storage_id=f"t{n}-{i}",
                        file_upload_id=f"f{n}-{i}",
                        original_file_name="x.txt",
                    )
                ]
            )

    async def body() -> None:
        threads = [threading.Thread(target=write, args=(w, n)) for n, w in enumerate(writers)]
        for t in threads:
            t.start()
        for t in threads:
            await asyncio.to_thread(t.join)
        await until(lambda: outbox.lag() == 0)

    try:
        asyncio.run(running(outbox, body))
    finally:
        for w in writers:
            w.close()
    total = len(stored(service))
    assert total == 100
    check_delivery(service, s, asyncio.run(consume(s, total)))


@pytest.mark.slow
def test_broker_down_then_restarted(tmp_path: Any) -> None:
    own = LocalBroker().start()  # memory-only: a restart loses its topics
    s = outbox_settings(own.bootstrap_servers)
    service = Bootstrap(s).batch_service(clock=ManualClock())
    outbox = outbox_of(s, service, backoff=(0.05, 0.5), producer_overrides=FAST)
    try:
        busy_workload(service, batches=1)

        async def body() -> None:
            await until(lambda: outbox.lag() == 0)
            published = outbox.position()
            own.stop()
            before = len(stored(service))
            await asyncio.to_thread(busy_workload, service, 2)  # commands never wait
            # ...for the broker: they were all stored while it was down, none published.
            assert len(stored(service)) > before and outbox.position() == published
            # Restart only once the in-flight page has failed: Tansu acknowledges (and
            # drops) a produce to a topic it does not know, which a retry that reaches
            # the restarted, empty broker before ensure_topics would be.
            await until(lambda: outbox.failures > 0)
            assert outbox.lag() > 0 and outbox.position() == published
            own.start()  # same port, empty: the outbox recreates its topics
            await until(lambda: outbox.lag() == 0, timeout=30)

        asyncio.run(running(outbox, body))
        # Everything published before the restart is gone with the broker's memory;
        # everything written while it was down arrived, in order.
        events = stored(service)
        missing = [e for e in events if e.__dict__["batch_id"] != "b0"]
        records = asyncio.run(consume(s, len(missing)))
        ids = {json.loads(r.value)["event_id"] for r in records}
        assert ids == {envelope_of(e, s.source_service).event_id for e in missing}
    finally:
        service.close()
        drop_schema(s)
        own.stop()


def test_outbox_run_blocks_until_stopped(env: tuple[Settings, BatchService]) -> None:
    s, service = env
    busy_workload(service, batches=1)
    stop = threading.Event()
    thread = threading.Thread(target=publish_until, args=(s, stop))
    thread.start()
    try:
        outbox = outbox_of(s, service)  # only to read the shared tracking position
        asyncio.run(until(lambda: outbox.lag() == 0))
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
