"""The followers' shared reads of the notification log (infrastructure/postgres/shared_log.py)
and the append's NOTIFY payload (infrastructure/postgres/listen.py). Real PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from application.commands import ExpirePending, ProvisionContent, RegisterBatch, TimeOutBatch
from application.service import BatchService
from infrastructure.bootstrap import Bootstrap
from infrastructure.postgres import shared_log as shared_log_module
from infrastructure.postgres.listen import Listener, SharedListener
from infrastructure.postgres.shared_log import SharedLog, shared_log
from infrastructure.postgres.store import conninfo
from infrastructure.processes.follower import follow
from infrastructure.settings import Settings
from projections.due_index import due_change_of
from projections.envelope import DATA_FIELDS, envelope_of
from projections.huleedu import Completion, HuleEduTopics, huleedu_messages, needs_completion
from projections.slot_view import change_of
from tests.conftest import ManualClock, make_settings
from tests.integration.slot_support import busy_workload, head
from tests.support.poll import eventually, eventually_async


@pytest.fixture
def service(test_settings: Settings) -> Iterator[BatchService]:
    with Bootstrap(test_settings, clock=ManualClock()) as built:
        yield built.service


def fields(page: Any) -> list[tuple[int, Any, int, str, bytes]]:
    return [(n.id, n.originator_id, n.originator_version, n.topic, n.state) for n in page]


def test_every_read_is_what_the_store_returns(
    service: BatchService,
) -> None:
    busy_workload(service, ManualClock(), batches=30, rounds=400)
    last = head(service)
    assert last > 100
    log = SharedLog(service.recorder, service.mapper, capacity=120)
    rng = random.Random(3)
    positions = [0, 0, 0]  # three followers, each reading on from where it stands
    for _ in range(300):
        i = rng.randrange(3)
        if rng.random() < 0.05:
            positions[i] = rng.randrange(last)  # a replay from anywhere
        limit = rng.choice([1, 5, 25, 60])
        page = log.read(positions[i], limit, rng.choice([None, last]))
        expected = service.recorder.select_notifications(
            start=positions[i], limit=limit, inclusive_of_start=False
        )
        assert fields(page) == fields(expected)
        assert log.events(page) == [service.mapper.to_domain_event(n) for n in page]
        if page:
            positions[i] = page[-1].id
    assert log.store_reads < log.reads  # (and some came from memory)


def test_three_followers_woken_by_one_notify_read_each_page_once(service: BatchService) -> None:
    busy_workload(service, ManualClock(), batches=10, rounds=200)
    announced = head(service)  # what the NOTIFY of the last append named
    log = SharedLog(service.recorder, service.mapper)
    position, pages = 0, 0
    while position < announced:
        page = log.read(position, 50, announced)
        assert log.read(position, 50, announced) == page == log.read(position, 50, announced)
        first = log.events(page)
        assert all(a is b for a, b in zip(log.events(page), first, strict=True))  # decoded once
        position, pages = page[-1].id, pages + 1
    assert len(page) < 50  # the last page was short, and still answered from memory
    assert (log.store_reads, log.reads) == (pages, 3 * pages)


def test_a_short_page_is_read_again_unless_the_notify_is_covered(service: BatchService) -> None:
    busy_workload(service, ManualClock(), batches=5, rounds=40)
    log = SharedLog(service.recorder, service.mapper)
    log.read(0, 1000)
    log.read(0, 1000)  # no announcement: the store may have more
    assert log.store_reads == 2
    log.read(0, 1000, head(service))
    assert log.store_reads == 2


def test_events_appended_after_a_cached_short_page_are_read(service: BatchService) -> None:
    busy_workload(service, ManualClock(), batches=5, rounds=40)
    log = SharedLog(service.recorder, service.mapper)
    first = log.read(0, 1000)  # everything so far: a short page
    service.execute([RegisterBatch(batch_id="later", correlation_id="c", essay_ids=["e1"])])
    more = log.read(first[0].id, 1000)  # starts inside the cached window, reaches past it
    assert fields(more) == fields(
        service.recorder.select_notifications(
            start=first[0].id, limit=1000, inclusive_of_start=False
        )
    )
    assert more[-1].id == head(service) > first[-1].id


def test_the_notify_of_an_append_names_its_schema_and_last_id(
    test_settings: Settings, service: BatchService
) -> None:
    other = make_settings()  # another schema, same database and channel

    async def scenario() -> tuple[int | None, int | None, int | None]:
        listener = Listener(test_settings, service.recorder.channel_name)
        try:
            assert await listener.wait(0.1) is None  # connects and LISTENs
            await asyncio.to_thread(
                service.execute,
                [RegisterBatch(batch_id="b1", correlation_id="c1", essay_ids=["e1", "e2"])],
            )
            ours = await listener.wait(5.0)
            with psycopg.connect(**conninfo(other), autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_notify(%s, %s)", (service.recorder.channel_name, "elsewhere:999")
                )
            theirs = await listener.wait(5.0)
            silent = await listener.wait(0.2)
            return ours, theirs, silent
        finally:
            await listener.close()

    ours, theirs, silent = asyncio.run(scenario())
    assert ours == head(service)
    assert theirs == 0  # another schema's append: nothing for this one
    assert silent is None  # a timeout says nothing


def test_an_empty_notify_payload_says_read(test_settings: Settings, service: BatchService) -> None:
    async def scenario() -> int | None:
        listener = Listener(test_settings, service.recorder.channel_name)
        try:
            await listener.wait(0.1)
            with psycopg.connect(**conninfo(test_settings), autocommit=True) as conn:
                conn.execute(f'NOTIFY "{service.recorder.channel_name}"')  # an older release
            return await listener.wait(5.0)
        finally:
            await listener.close()

    assert asyncio.run(scenario()) is None


def test_followers_reading_the_same_page_at_once_make_one_store_read(
    service: BatchService,
) -> None:
    busy_workload(service, ManualClock(), batches=10, rounds=200)
    announced = head(service)
    log = SharedLog(service.recorder, service.mapper)
    barrier = threading.Barrier(3)
    pages: list[Any] = []

    def follower() -> None:
        barrier.wait()
        pages.append(fields(log.read(0, 1000, announced)))

    threads = [threading.Thread(target=follower) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(pages) == 3 and pages[0] == pages[1] == pages[2]
    assert pages[0][-1][0] == announced
    assert log.store_reads == 1


def test_the_head_check_sees_a_restore_not_appends_that_land_while_it_asks(
    service: BatchService,
) -> None:
    log = SharedLog(service.recorder, service.mapper)
    busy_workload(service, ManualClock(), batches=5, rounds=60)
    first = head(service)
    assert len(log.read(0, 1000)) == first  # the window reaches the head

    def head_while_more_lands() -> int:
        # The store answers with its head, then an append lands and another follower
        # reads it: the window moves past the answer before the check compares.
        answer = head(service)
        service.execute([RegisterBatch(batch_id="late", correlation_id="late", essay_ids=["e1"])])
        assert log.read(answer, 1000)
        return answer

    assert log.check_head(head_while_more_lands) == (first, False)
    reads, latest = log.store_reads, head(service)
    assert log.read(first, 1000, latest)[-1].id == latest  # the window was kept:
    assert log.store_reads == reads  # answered from memory
    # A store whose head is behind what the window holds (restored): it is dropped.
    assert log.check_head(lambda: first - 5) == (first - 5, True)
    reads = log.store_reads
    log.read(0, 10)
    assert log.store_reads == reads + 1  # read from the store again


def test_this_process_s_appends_are_kept_without_a_read_back(
    test_settings: Settings, service: BatchService
) -> None:
    log = SharedLog(service.recorder, service.mapper)
    assert log.read(0, 10) == []  # a follower reads here: this process's appends are kept
    busy_workload(service, ManualClock(), batches=10, rounds=200)  # appends of this process
    last = head(service)
    page = log.read(0, 1000, last)
    assert log.store_reads == 1 and log.pushed == last  # every one kept from its append
    stored = service.recorder.select_notifications(start=0, limit=1000, inclusive_of_start=False)
    assert fields(page) == fields(stored)  # exactly what the store holds
    assert [n.traceparent for n in page] == [n.traceparent for n in stored]  # type: ignore[attr-defined]
    assert log.events(page) == [service.mapper.to_domain_event(n) for n in stored]

    # Another process appends (ids this process has not read), then this one: its append
    # does not continue the window, so it is not kept, and the read finds both.
    with Bootstrap(test_settings, clock=ManualClock()) as other:
        other.service.execute(
            [RegisterBatch(batch_id="theirs", correlation_id="t", essay_ids=["e1"])]
        )
    theirs = head(service)
    service.execute([RegisterBatch(batch_id="ours", correlation_id="o", essay_ids=["e1"])])
    assert log.pushed == last  # not kept
    more = log.read(last, 1000, head(service))
    assert log.store_reads == 2
    assert [n.id for n in more] == [theirs, head(service)]
    assert fields(more) == fields(
        service.recorder.select_notifications(start=last, limit=1000, inclusive_of_start=False)
    )


class _NoDecoding:
    """A mapper that refuses to decode: what the window is asked for must be in it."""

    def to_domain_event(self, notification: Any) -> Any:
        raise AssertionError(f"notification {notification.id} was decoded")


def test_this_process_s_saved_events_are_taken_as_they_were_saved_not_decoded(
    service: BatchService,
) -> None:
    log = shared_log(service)  # (the process's log: told of every save of the service)
    assert log.read(0, 10) == []  # (a follower reads here)
    clock = service.clock
    assert isinstance(clock, ManualClock)
    busy_workload(service, clock, batches=10, rounds=400)
    service.execute(
        [
            ProvisionContent(
                batch_id="never",
                correlation_id="n1",
                text_storage_id="t",
                file_upload_id="f",
                original_file_name="late.txt",
            ),
            RegisterBatch(
                batch_id="open",
                correlation_id="o1",
                essay_ids=["e1", "e2"],
                course_code="ENG5",
                user_id="u1",
            ),
        ]
    )
    clock.advance(2 * 86400)
    service.execute(
        [
            ExpirePending(batch_id="never", correlation_id="n2"),
            TimeOutBatch(batch_id="open", correlation_id="o2"),
        ]
    )
    last = head(service)
    page = log.read(0, 1000, last)
    assert log.store_reads == 1 and len(log._events) == last == len(page)
    decoded = [service.mapper.to_domain_event(n) for n in page]
    log.mapper = _NoDecoding()  # type: ignore[assignment]
    kept = log.events(page)
    assert {type(e).__name__ for e in kept} == set(DATA_FIELDS)
    # The events as saved, read after every later decision on their batches, are the
    # stored facts: equal to a decode, and mapped alike by every follower.
    assert kept == decoded
    announced = 0
    registrations = {e.originator_id: e for e in decoded if type(e).__name__ == "BatchRegistered"}
    for saved, stored in zip(kept, decoded, strict=True):
        assert envelope_of(saved, "s") == envelope_of(stored, "s")
        assert change_of(saved) == change_of(stored)
        assert due_change_of(saved) == due_change_of(stored)
        registration = registrations.get(saved.originator_id)
        if needs_completion(saved) and not getattr(registration, "user_id", None):
            continue  # (registered without an owner: HuleEdu is told nothing)
        announced += needs_completion(saved)
        completions = [
            Completion(registration, [e]) if needs_completion(e) else None for e in (saved, stored)
        ]
        assert huleedu_messages(saved, HuleEduTopics(), "s", None, completions[0]) == (
            huleedu_messages(stored, HuleEduTopics(), "s", None, completions[1])
        )
    assert announced == 1


def test_saved_events_of_ids_the_window_does_not_hold_are_decoded_when_read(
    test_settings: Settings, service: BatchService
) -> None:
    log = shared_log(service)
    assert log.read(0, 10) == []  # (a follower reads here)
    service.execute([RegisterBatch(batch_id="ours", correlation_id="o", essay_ids=["e1"])])
    with Bootstrap(test_settings, clock=ManualClock()) as other:  # ids this one has not read
        other.service.execute(
            [RegisterBatch(batch_id="theirs", correlation_id="t", essay_ids=["e1"])]
        )
    service.execute([RegisterBatch(batch_id="later", correlation_id="l", essay_ids=["e1"])])
    assert len(log._events) == 1  # the append after theirs did not continue the window
    page = log.read(0, 10, head(service))
    assert [e.batch_id for e in log.events(page)] == ["ours", "theirs", "later"]
    assert log.events(page) == [service.mapper.to_domain_event(n) for n in page]


def test_the_window_answers_what_it_holds_without_the_store(service: BatchService) -> None:
    busy_workload(service, ManualClock(), batches=10, rounds=200)
    last = head(service)
    log = SharedLog(service.recorder, service.mapper)
    assert log.cached(0, 50, last) is None  # nothing held yet: ask the store
    page = log.read(0, 50, last)
    assert log.store_reads == 1
    assert log.cached(0, 50, last) == page  # held: answered from memory
    assert log.cached(page[5].id, 10, last) == page[6:16]
    assert log.cached(page[-1].id, 50) is None  # after the window, nothing announced
    assert log.store_reads == 1


def test_the_followers_of_a_process_share_one_listen_connection(
    test_settings: Settings, service: BatchService
) -> None:
    channel = service.recorder.channel_name
    built: list[Listener] = []

    def connect() -> Listener:
        built.append(Listener(test_settings, channel))
        return built[-1]

    def backend() -> int:
        conn = built[-1]._conn
        assert conn is not None
        return int(conn.info.backend_pid)

    def alive(pid: int) -> bool:
        with psycopg.connect(**conninfo(test_settings), autocommit=True) as conn:
            return bool(
                conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
            )

    def append(batch_id: str) -> None:
        service.execute([RegisterBatch(batch_id=batch_id, correlation_id="c", essay_ids=["e"])])

    async def scenario() -> None:
        shared = SharedListener(connect)
        subscriptions = [shared.subscribe() for _ in range(3)]
        assert [await s.wait(0.1) for s in subscriptions] == [None] * 3  # joined: read
        for s in subscriptions:  # the reader has connected meanwhile: read once more
            assert await s.wait(5.0) is None
        assert len(built) == 1  # one connection for the three
        first = backend()
        await asyncio.to_thread(append, "b1")
        assert [await s.wait(5.0) for s in subscriptions] == [head(service)] * 3
        assert [await s.wait(0.2) for s in subscriptions] == [None] * 3  # timeouts

        # The shared connection dies: every subscription is told to read, and NOTIFYs
        # still come, on a new connection.
        with psycopg.connect(**conninfo(test_settings), autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (first,))
        for s in subscriptions:
            assert await s.wait(10.0) is None
        while built[-1]._conn is None:  # (reconnecting)
            await asyncio.sleep(0.05)
        for s in subscriptions:  # (drain the reconnection's "read")
            await s.wait(0.5)
        await asyncio.to_thread(append, "b2")
        assert [await s.wait(5.0) for s in subscriptions] == [head(service)] * 3
        second = backend()
        assert second != first and alive(second)
        for s in subscriptions:
            await s.close()
        assert built[-1]._conn is None  # the last one out closed it
        await asyncio.to_thread(eventually, lambda: not alive(second))

    asyncio.run(scenario())


def test_the_window_holds_at_most_its_bytes_of_stored_state(service: BatchService) -> None:
    busy_workload(service, ManualClock(), batches=20, rounds=400)
    last = head(service)
    bound = 20_000
    log = SharedLog(service.recorder, service.mapper, capacity_bytes=bound)
    position = 0
    while position < last:
        page = log.read(position, 25, last)
        expected = service.recorder.select_notifications(
            start=position, limit=25, inclusive_of_start=False
        )
        assert fields(page) == fields(expected)
        position = page[-1].id
        held = sum(len(n.state) for n in log._rows.values())
        assert held == log._bytes <= bound
    assert 0 < len(log._rows) < last  # trimmed: the older part is gone
    assert log.cached(position - 3, 25, last) == log.read(position - 3, 25, last)  # recent held


class _Collecting:
    """A follower that keeps every page it is given (the shared loop's ``Follower``)."""

    def __init__(self) -> None:
        self.position = 0
        self.ids: list[int] = []
        self.waits = 0

    async def read_after(self) -> int:
        return self.position

    async def handle(self, page: Any, after: int | None) -> None:
        self.ids.extend(n.id for n in page)
        self.position = page[-1].id

    async def caught_up(self) -> None:
        self.waits += 1

    async def failed(self, error: Exception) -> bool:
        raise error


def test_pages_of_this_process_s_appends_come_from_memory_also_while_they_come_full(
    test_settings: Settings, service: BatchService
) -> None:
    log = shared_log(service)
    busy_workload(service, ManualClock(), batches=10, rounds=200)
    channel = service.recorder.channel_name
    follower = _Collecting()

    async def scenario() -> None:
        stop = asyncio.Event()
        wake = SharedListener(lambda: Listener(test_settings, channel)).subscribe()
        task = asyncio.create_task(
            follow(follower, log, wake, stop, page_size=50, idle_timeout=30.0)
        )
        await eventually_async(lambda: follower.position == head(service) and follower.waits > 1)
        reads = log.store_reads
        # A burst of appends, many pages of it: the loop reads page after full page.
        await asyncio.to_thread(busy_workload, service, ManualClock(), 10, 600, 9)
        await eventually_async(lambda: follower.position == head(service))
        assert log.store_reads == reads  # every page from the window, none read back
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    stored = service.recorder.select_notifications(start=0, limit=10_000, inclusive_of_start=False)
    assert follower.ids == [n.id for n in stored]  # each event once, in order, none missing


def test_a_process_whose_followers_do_not_read_here_keeps_none_of_its_appends(
    service: BatchService, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = shared_log(service)  # (as a worker's: its followers lead in other processes)
    busy_workload(service, ManualClock(), batches=10, rounds=200)
    assert log.pushed == 0 and not log._rows  # nothing held for nobody
    page = log.read(0, 1000, head(service))  # a follower starts reading here:
    assert log.store_reads == 1 and len(page) == head(service)
    service.execute([RegisterBatch(batch_id="later", correlation_id="l", essay_ids=["e1"])])
    assert log.pushed == 1  # from now on its appends are kept
    monkeypatch.setattr(shared_log_module, "UNREAD_SECONDS", 0.0)  # (no read since)
    service.execute([RegisterBatch(batch_id="later2", correlation_id="l", essay_ids=["e1"])])
    assert log.pushed == 1
