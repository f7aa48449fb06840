"""kill -9 of a real ``batchctl outbox`` mid-stream: a restart republishes little.

A restart resumes from the recorded position, so it republishes exactly the
events already on the topic beyond it: measured after each kill, at most one
page (250 events). Real process, real PostgreSQL, real broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from aiokafka import TopicPartition

from application.commands import AnyCommand, ProvisionContent, RegisterBatch
from infrastructure.bootstrap import Bootstrap
from infrastructure.kafka.clients import ensure_topics, make_consumer
from infrastructure.kafka.local_broker import LocalBroker
from infrastructure.settings import Settings
from projections.envelope import event_id_of
from tests.conftest import drop_redis_prefix, drop_schema
from tests.e2e.conftest import kafka_settings, service_env
from tests.support.followers import outbox_of

ROOT = Path(__file__).resolve().parents[2]
REPUBLISHED_PER_RESTART = 250  # one page (Outbox.page_size): the figure docs/faults.md states


def process_env(s: Settings) -> dict[str, str]:
    return service_env(s)


def start_outbox(s: Settings) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "infrastructure.cli.main", "outbox"],
        cwd=ROOT,
        env=process_env(s),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def backlog(s: Settings, batches: int, slots: int) -> int:
    service = Bootstrap(s).batch_service()
    try:
        for b in range(batches):
            essays = [f"e{i}" for i in range(slots)]
            commands: list[AnyCommand] = [
                RegisterBatch(batch_id=f"b{b}", correlation_id="c", essay_ids=essays)
            ]
            commands += [
                ProvisionContent(
                    batch_id=f"b{b}",
                    correlation_id=f"c{i}",
                    text_storage_id=f"t{i}",
                    file_upload_id=f"f{i}",
                    original_file_name="essay.docx",
                )
                for i in range(slots)
            ]
            for i in range(0, len(commands), 500):
                service.execute(commands[i : i + 500])
        return service.recorder.max_notification_id() or 0
    finally:
        service.close()


async def published_ids(s: Settings, at_least: int = 0, timeout: float = 60.0) -> list[bytes]:
    """Every event_id on the events topic, duplicates included (read from the start)."""
    consumer = make_consumer(s, group_id=None, fetch_max_wait_ms=100)
    await consumer.start()
    ids: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        await consumer.topics()  # metadata
        partitions = consumer.partitions_for_topic(s.topics.events) or set()
        assert partitions, "no metadata for the events topic"
        consumer.assign([TopicPartition(s.topics.events, p) for p in partitions])
        await consumer.seek_to_beginning()
        end = sum((await consumer.end_offsets(list(consumer.assignment()))).values())
        quiet = 0  # empty polls in a row once everything expected was read
        while len(ids) < end or len(set(ids)) < at_least or quiet < 3:
            assert time.monotonic() < deadline, f"{len(set(ids))} of {at_least} events"
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            quiet = 0 if batches else quiet + 1
            for part in batches.values():
                ids += [dict(r.headers)["event_id"] for r in part]
    finally:
        await consumer.stop()
    return ids


def notification_ids(s: Settings) -> dict[bytes, int]:
    """event_id -> notification id, for every stored event."""
    service = Bootstrap(s).batch_service()
    try:
        return {
            str(event_id_of(n.originator_id, n.originator_version)).encode(): n.id
            for n in service.recorder.select_notifications(None, 1_000_000)
        }
    finally:
        service.close()


def test_kill_9_mid_stream_republishes_at_most_one_page(broker: LocalBroker) -> None:
    s = kafka_settings(broker)
    asyncio.run(ensure_topics(s))
    total = backlog(s, batches=20, slots=1500)  # ~30,000 events waiting
    nid = notification_ids(s)
    service = Bootstrap(s).batch_service()
    reader = outbox_of(s, service)  # only to read the shared position
    kills, rng = 6, random.Random(11)
    republished: list[int] = []
    try:
        for k in range(kills):
            process = start_outbox(s)
            threshold = (k + 1) * total // (kills + 2)
            deadline = time.monotonic() + 60
            while reader.position() < threshold:
                assert process.poll() is None, "the outbox exited"
                assert time.monotonic() < deadline, "the outbox made no progress"
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.1))  # the fault strikes anywhere in a page
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            position = reader.position()  # where the restart resumes
            assert position < total, f"kill {k} came after the end"
            on_topic = set(asyncio.run(published_ids(s)))
            republished.append(sum(1 for i in on_topic if nid[i] > position))
        process = start_outbox(s)
        try:
            deadline = time.monotonic() + 120
            while reader.position() < total:
                assert time.monotonic() < deadline, "the restarted outbox did not catch up"
                time.sleep(0.05)
        finally:
            process.terminate()
            process.wait(10)
        seen = Counter(asyncio.run(published_ids(s, at_least=total)))
        assert set(seen) == set(nid)  # nothing lost
        duplicates = sum(n - 1 for n in seen.values())
        print(
            json.dumps(
                {"events": total, "republished_per_restart": republished, "duplicates": duplicates}
            )
        )
        assert max(republished) <= REPUBLISHED_PER_RESTART, republished
        assert duplicates == sum(republished)
    finally:
        service.close()
        drop_schema(s)
        drop_redis_prefix(s)
