"""The outbox under its lease (as `batchctl run` runs it): its position in memory between
pages, recorded in the background every ``record_every`` events or ``record_interval``
seconds instead of after every page; nothing lost, nothing published twice, and the
position in the store catches up once the outbox is idle. Real PostgreSQL and broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import psycopg

from application.commands import ProvisionContent, RegisterBatch
from application.service import BatchService
from infrastructure.bootstrap import Bootstrap
from infrastructure.postgres.lease import LeaseKeeper
from infrastructure.postgres.shared_log import shared_log
from infrastructure.postgres.store import conninfo
from infrastructure.processes.leadership import Leadership
from infrastructure.processes.outbox import TRACKING_TABLE, Outbox
from infrastructure.settings import Settings
from tests.integration import test_outbox as outbox_tests
from tests.integration.slot_support import head
from tests.integration.test_outbox import check_delivery, consume
from tests.support.followers import outbox_of
from tests.support.poll import eventually_async

env = outbox_tests.env  # the same store and broker topics as the outbox's other tests


@contextlib.asynccontextmanager
async def leading(s: Settings, outbox: Outbox, holder: str) -> AsyncIterator[Leadership]:
    """``outbox`` run under its lease (as ``holder``) for the block, then stopped."""
    stop = asyncio.Event()
    leadership = Leadership(LeaseKeeper(s, ["outbox"], holder))
    task = asyncio.create_task(leadership.run({"outbox": outbox.run}, stop))
    try:
        yield leadership
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def register(service: BatchService, tag: str, n: int) -> None:
    """``n`` registrations, one append each: batches ``{tag}0`` … ``{tag}{n-1}``."""
    for i in range(n):
        service.execute(
            [RegisterBatch(batch_id=f"{tag}{i}", correlation_id=f"{tag}{i}", essay_ids=["e"])]
        )


class CountingOutbox(Outbox):
    """The real outbox, counting its position writes (each one a committed transaction)."""

    writes = 0

    def _record(self, notification_id: int) -> None:
        super()._record(notification_id)
        self.writes += 1


def test_a_leased_outbox_records_its_position_a_few_times_not_after_every_page(
    env: tuple[Settings, BatchService],
) -> None:
    s, service = env
    appends = 60

    async def scenario() -> tuple[int, int]:
        outbox = outbox_of(s, service, CountingOutbox, record_every=100, record_interval=0.3)
        async with leading(s, outbox, "only") as leadership:
            await eventually_async(lambda: leadership.leads("outbox"), 10, what="the lease")
            for i in range(appends):  # one small append at a time: a page each
                await asyncio.to_thread(
                    service.execute,
                    [
                        RegisterBatch(batch_id=f"b{i}", correlation_id=f"r{i}", essay_ids=["e1"])
                        if i % 2 == 0
                        else ProvisionContent(
                            batch_id=f"b{i - 1}",
                            correlation_id=f"p{i}",
                            text_storage_id=f"t{i}",
                            file_upload_id=f"f{i}",
                            original_file_name="a.txt",
                        )
                    ],
                )
                await asyncio.sleep(0.01)
            last = head(service)
            # Idle: the position reaches the store's head within record_interval or so.
            await eventually_async(lambda: outbox.position() == last, 10, what="the position")
            writes = outbox.writes
        return writes, last

    writes, last = asyncio.run(scenario())
    seen = check_delivery(service, s, asyncio.run(consume(s, last)))
    assert set(seen.values()) == {1}  # every event once
    pages = shared_log(service).reads  # the outbox's reads: at least one per append
    assert pages >= appends // 2
    assert 1 <= writes <= appends // 4, (writes, pages)  # was one per page


def test_an_outbox_that_leads_again_goes_on_from_the_store_not_from_memory(
    env: tuple[Settings, BatchService],
) -> None:
    """Led, handed over (another instance published meanwhile), led again: the same
    object must not go back to where it stood when it last led."""
    s, service = env

    async def lead(outbox: Outbox, until_position: int) -> None:
        async with leading(s, outbox, "again"):
            await eventually_async(
                lambda: outbox.position() >= until_position, 10, what="the position"
            )

    async def scenario() -> int:
        outbox = outbox_of(s, service)
        register(service, "a", 5)
        await lead(outbox, head(service))
        register(service, "b", 5)
        other = outbox_of(s, service)  # another instance leads meanwhile
        while await other.publish_once():
            pass
        await other.close()
        register(service, "c", 5)
        await lead(outbox, head(service))
        return head(service)

    last = asyncio.run(scenario())
    seen = check_delivery(service, s, asyncio.run(consume(s, last)))
    assert set(seen.values()) == {1}, {i: n for i, n in seen.items() if n > 1}


def test_a_store_restored_under_a_leased_outbox_is_noticed_and_its_new_events_published(
    env: tuple[Settings, BatchService],
) -> None:
    """PostgreSQL restored from an older backup (events, sequence and the outbox's position
    taken back) under a running outbox, then more events than were lost: every event the
    store now has is published, though it reuses ids the outbox had already gone past."""
    s, service = env

    async def scenario() -> int:
        outbox = outbox_of(s, service, record_every=1)
        outbox.head_check_seconds = 0.2
        async with leading(s, outbox, "restored"):
            register(service, "a", 5)
            backup = head(service)
            await eventually_async(lambda: outbox.position() == backup, 10, what="published")
            register(service, "lost", 5)
            await eventually_async(lambda: outbox.position() == head(service), 10, what="all")
            restore(s, backup)
            register(service, "new", 8)  # more than were lost: their ids are drawn again
            last = head(service)
            await eventually_async(lambda: outbox.position() == last, 10, what="new published")
        return last

    asyncio.run(scenario())
    fresh = Bootstrap(s).batch_service()
    try:
        records = asyncio.run(consume(s, head(fresh)))
        published = {json.loads(r.value)["data"]["batch_id"] for r in records}
        assert {f"new{i}" for i in range(8)} <= published, published
    finally:
        fresh.close()


def restore(s: Settings, position: int) -> None:
    """As if PostgreSQL were restored from a backup taken at ``position``."""
    schema = s.database_schema
    with psycopg.connect(**conninfo(s), autocommit=True) as conn:
        conn.execute(
            f'DELETE FROM "{schema}".batchservice_events WHERE notification_id > %s', (position,)
        )
        conn.execute(f'DELETE FROM "{schema}".batchservice_snapshots')
        conn.execute(
            "SELECT setval(pg_get_serial_sequence(%s, 'notification_id'), %s)",
            (f'"{schema}".batchservice_events', position),
        )
        conn.execute(f'UPDATE "{schema}".outbox_tracking SET notification_id = %s', (position,))


def test_a_position_the_store_refuses_for_a_while_is_recorded_later_not_published_again(
    env: tuple[Settings, BatchService],
) -> None:
    """The store refuses the outbox's position writes (read-only for a while, as in a
    failover): what was published stays published, and the position is recorded once
    the store takes writes again; nothing is sent again meanwhile."""
    s, service = env
    schema = s.database_schema
    refuse = (
        f"CREATE FUNCTION {schema}.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'read-only for now' USING ERRCODE = 'read_only_sql_transaction'; "
        f"END $$; CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON {schema}.{TRACKING_TABLE} "
        f"FOR EACH ROW EXECUTE FUNCTION {schema}.refuse()"
    )
    accept = f"DROP TRIGGER refuse ON {schema}.{TRACKING_TABLE}; DROP FUNCTION {schema}.refuse()"

    def sql(statement: str) -> None:
        with psycopg.connect(**conninfo(s), autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    def append(i: int) -> None:
        service.execute([RegisterBatch(batch_id=f"r{i}", correlation_id=f"c{i}", essay_ids=["e"])])

    async def scenario() -> tuple[int, int]:
        outbox = outbox_of(s, service, CountingOutbox, record_interval=0.05)
        async with leading(s, outbox, "only") as leadership:
            await eventually_async(lambda: leadership.leads("outbox"), 10, what="the lease")
            await asyncio.to_thread(append, 0)
            await eventually_async(lambda: outbox.position() == head(service), 10)
            recorded = outbox.position()
            await asyncio.to_thread(sql, refuse)
            for i in range(1, 11):  # published, their position refused
                await asyncio.to_thread(append, i)
                await asyncio.sleep(0.05)
            await asyncio.sleep(2.0)  # several rounds of the outbox's retries
            assert outbox.position() == recorded and outbox.failures >= 2
            await asyncio.to_thread(sql, accept)
            last = head(service)
            await eventually_async(lambda: outbox.position() == last, 20, what="recorded")
            failures = outbox.failures
        return failures, last

    failures, last = asyncio.run(scenario())
    seen = check_delivery(service, s, asyncio.run(consume(s, last)))
    assert set(seen.values()) == {1}, seen  # every event once: nothing sent again
    assert failures <= 8  # retried with a growing backoff, not every 0.1 s
