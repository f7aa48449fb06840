"""The main job: a realistic local run, as an upstream pipeline would drive the service.

1. Bring up what is missing: the database and topics, and the local
   Kafka-protocol broker when KAFKA_BOOTSTRAP_SERVERS is unset and nothing
   answers on 127.0.0.1:9092.
2. Start the service (`batchctl run`) as its own process.
3. Feed a scenario through the inbound topics: tens of batches, content before
   registration, duplicates, validation failures, excess, invalid messages,
   one batch left to time out.
4. Show live progress, then a table of per-batch outcomes read from Redis and
   from batch.events.v1, and `batchctl verify`.

``--wire huleedu`` runs the same scenario as HuleEdu's services would send it
(``tests/support/huleedu_scenario.py``: HuleEdu's envelope and field names, File
Service records keyed by ``file_upload_id``, relay re-publishes with new event
ids) against the service in ``WIRE_PROFILE=huleedu``, and adds a table of what
HuleEdu's Batch Orchestrator Service and Result Aggregator receive: one
BatchContentProvisioningCompletedV1 per batch, EssaySlotAssignedV1 and
ExcessContentProvisionedV1 events.

Exit 0 when every batch reached its expected outcome and the read model agrees
with the store; 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # tests.support (the scenario) is not an installed package
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, Progress, TextColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from infrastructure.bootstrap import Bootstrap  # noqa: E402
from infrastructure.kafka.clients import ensure_topics, make_consumer, make_producer  # noqa: E402
from infrastructure.kafka.local_broker import BrokerUnavailable  # noqa: E402
from infrastructure.postgres.store import ensure_database  # noqa: E402
from infrastructure.processes.runtime import local_broker_if_needed  # noqa: E402
from infrastructure.redis.view import RedisSlotView  # noqa: E402
from infrastructure.settings import Settings, SettingsError, load_settings  # noqa: E402
from tests.support.huleedu_scenario import as_huleedu, owner_of  # noqa: E402
from tests.support.scenario import Scenario, generate  # noqa: E402

console = Console(width=None if sys.stdout.isatty() else 150)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batches", type=int, default=30, help="batches in the scenario (default 30)")
    p.add_argument("--timeout-seconds", type=int, default=20, help="batch deadline for this run")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--wait", type=float, default=90.0, help="seconds to wait for outcomes")
    p.add_argument(
        "--wire",
        choices=("native", "huleedu"),
        default="native",
        help="native: this service's own message shapes (default); huleedu: the scenario as "
        "HuleEdu's services send it, the service in WIRE_PROFILE=huleedu, and what BOS receives",
    )
    return p.parse_args()


async def feed(settings: Settings, scenario: Scenario) -> None:
    topic = settings.topics.by_kind
    producer = make_producer(settings)
    await producer.start()
    try:
        with Progress(
            TextColumn("feeding inbound topics"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            console=console,
        ) as bar:
            task = bar.add_task("feed", total=len(scenario.messages))
            for m in scenario.messages:
                await producer.send_and_wait(topic[m.kind], value=m.value, key=m.key.encode())
                bar.advance(task)
                await asyncio.sleep(0.002)  # upstream traffic, not one burst
    finally:
        await producer.stop()


async def completions(
    settings: Settings, batch_ids: set[str], deadline: float
) -> dict[str, dict[str, Any]]:
    """Read batch.events.v1 from the beginning; collect BatchCompleted of this run."""
    consumer = make_consumer(settings, settings.topics.events, group_id=None)
    await consumer.start()
    seen: set[str] = set()
    done: dict[str, dict[str, Any]] = {}
    try:
        with Progress(
            TextColumn("batches closed (from batch.events.v1)"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            console=console,
        ) as bar:
            task = bar.add_task("closed", total=len(batch_ids))
            while len(done) < len(batch_ids) and time.monotonic() < deadline:
                records = await consumer.getmany(timeout_ms=500)
                for record in (r for rs in records.values() for r in rs):
                    event = json.loads(record.value)
                    if event["event_id"] in seen:
                        continue
                    seen.add(event["event_id"])
                    data = event["data"]
                    if event["event_type"] == "BatchCompleted" and data["batch_id"] in batch_ids:
                        done[data["batch_id"]] = data
                bar.update(task, completed=len(done))
    finally:
        await consumer.stop()
    return done


async def dead_letters(settings: Settings, run_tag: str) -> dict[str, int]:
    """Dead letters of this run, by reason (read from the DLQ topic)."""
    consumer = make_consumer(settings, settings.topics.dlq, group_id=None)
    await consumer.start()
    reasons: dict[str, int] = {}
    try:
        for _ in range(6):
            records = await consumer.getmany(timeout_ms=500)
            for record in (r for rs in records.values() for r in rs):
                if run_tag.encode() in (record.value or b""):
                    reason = dict(record.headers)["dlq.reason"].decode()
                    reasons[reason] = reasons.get(reason, 0) + 1
    finally:
        await consumer.stop()
    return reasons


def projected(settings: Settings, deadline: float) -> None:
    """Wait until the projector has applied every stored event (or the deadline)."""
    service = Bootstrap(settings).batch_service()
    view = RedisSlotView.from_settings(settings)
    try:
        head = service.recorder.max_notification_id() or 0
        while (view.position() or 0) < head and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        view.close()
        service.close()


def report(settings: Settings, scenario: Scenario, done: dict[str, dict[str, Any]]) -> bool:
    view = RedisSlotView.from_settings(settings)
    table = Table(title="Per-batch outcomes (Redis read model | batch.events.v1)")
    for col in (
        "batch",
        "kind",
        "slots",
        "assigned",
        "failed",
        "excess",
        "redis status",
        "kafka outcome",
        "expected",
        "ok",
    ):
        table.add_column(col)
    all_ok = True
    for batch_id, exp in scenario.expected.items():
        model = view.read_batch(batch_id)
        summary = model.summary if model else {}
        outcome = done.get(batch_id, {}).get("outcome", "—")
        ok = (
            outcome == exp.outcome
            and summary.get("assigned") == str(exp.assigned)
            and summary.get("failed") == str(exp.failed)
            and summary.get("excess") == str(exp.excess)
            and summary.get("status") == ("completed" if exp.outcome == "complete" else "timed_out")
        )
        all_ok &= ok
        table.add_row(
            batch_id,
            exp.kind,
            str(exp.slots),
            summary.get("assigned", "—"),
            summary.get("failed", "—"),
            summary.get("excess", "—"),
            summary.get("status", "—"),
            outcome,
            exp.outcome,
            "[green]yes[/]" if ok else "[red]NO[/]",
        )
    view.close()
    console.print(table)
    return all_ok


async def huleedu_received(
    settings: Settings, batch_ids: set[str], deadline: float
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """What HuleEdu's consumers receive of this run, per batch and HuleEdu topic (read
    from the beginning until every batch has its completion, or the deadline)."""
    topics = settings.topics.huleedu
    consumer = make_consumer(settings, *topics.all, group_id=None)
    await consumer.start()
    got: dict[str, dict[str, list[dict[str, Any]]]] = {
        b: {t: [] for t in topics.all} for b in batch_ids
    }
    try:
        idle_until = None
        while time.monotonic() < deadline:
            records = await consumer.getmany(timeout_ms=500)
            for record in (r for rs in records.values() for r in rs):
                envelope = json.loads(record.value)
                batch = envelope["data"]["batch_id"]
                if batch in got:
                    got[batch][record.topic].append(envelope)
            if all(got[b][topics.completed] for b in batch_ids):
                # Every batch announced: read on a little for any later duplicates.
                idle_until = idle_until or time.monotonic() + 2
                if time.monotonic() > idle_until:
                    break
    finally:
        await consumer.stop()
    return got


def report_huleedu(
    settings: Settings, scenario: Scenario, got: dict[str, dict[str, list[dict[str, Any]]]]
) -> bool:
    topics = settings.topics.huleedu
    table = Table(title="What HuleEdu's BOS and Result Aggregator receive (HuleEdu topics)")
    for col in (
        "batch",
        "course",
        "completions",
        "expected_count",
        "provisioned_count",
        "slot assigned",
        "excess",
        "ok",
    ):
        table.add_column(col)
    all_ok = True
    for batch_id, exp in scenario.expected.items():
        received = got.get(batch_id, {t: [] for t in topics.all})
        done = received[topics.completed]
        data = done[0]["data"] if done else {}
        ok = (
            len(done) == 1
            and data.get("expected_count") == exp.slots
            and data.get("provisioned_count") == exp.assigned
            and data.get("course_code") == owner_of(batch_id)[0]
            and len(received[topics.slot_assigned]) == exp.assigned
            and len(received[topics.excess]) == exp.excess
        )
        all_ok &= ok
        table.add_row(
            batch_id,
            str(data.get("course_code", "—")),
            str(len(done)),
            str(data.get("expected_count", "—")),
            str(data.get("provisioned_count", "—")),
            str(len(received[topics.slot_assigned])),
            str(len(received[topics.excess])),
            "[green]yes[/]" if ok else "[red]NO[/]",
        )
    console.print(table)
    return all_ok


def main() -> int:
    args = parse_args()
    wire = {"WIRE_PROFILE": "huleedu"} if args.wire == "huleedu" else {}
    try:
        settings = load_settings({**os.environ, **wire})
    except SettingsError as e:
        console.print(f"[red]configuration:[/] {e}")
        return 2
    run_tag = time.strftime("run%H%M%S")
    env = {
        **os.environ,
        **wire,
        "BATCH_TIMEOUT_SECONDS": str(args.timeout_seconds),
        "SWEEP_INTERVAL_SECONDS": "1",
    }
    settings = settings.model_copy(update={"batch_timeout_seconds": args.timeout_seconds})
    try:
        broker = local_broker_if_needed(settings)
    except BrokerUnavailable as e:
        console.print(f"[red]Kafka:[/] {e}")
        return 2
    if broker:
        console.print(f"started the local Kafka-protocol broker on {broker.bootstrap_servers}")
    ensure_database(settings)
    asyncio.run(ensure_topics(settings))
    logs = ROOT / "var"
    logs.mkdir(exist_ok=True)
    service_log = open(logs / "service.log", "ab")  # noqa: SIM115
    service = subprocess.Popen(
        [sys.executable, "-m", "infrastructure.cli.main", "run"],
        env=env,
        stdout=service_log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    console.print(f"service started (pid {service.pid}, logs in var/service.log)")
    try:
        scenario = generate(run_tag, batches=args.batches, seed=args.seed)
        if args.wire == "huleedu":
            scenario = as_huleedu(scenario, seed=args.seed)
        console.print(
            f"scenario {run_tag}: {len(scenario.expected)} batches, "
            f"{len(scenario.messages)} messages ({scenario.invalid} invalid, for the dead-letter "
            f"topic); one batch times out after {args.timeout_seconds}s"
        )
        asyncio.run(feed(settings, scenario))
        deadline = time.monotonic() + args.wait
        done = asyncio.run(completions(settings, set(scenario.expected), deadline))
        projected(settings, time.monotonic() + 30)  # the read model has every event
        ok = report(settings, scenario, done)
        if args.wire == "huleedu":
            got = asyncio.run(
                huleedu_received(settings, set(scenario.expected), time.monotonic() + 30)
            )
            ok &= report_huleedu(settings, scenario, got)
        dlq = asyncio.run(dead_letters(settings, run_tag))
        console.print(f"dead-lettered (batch.dlq.v1): {dlq or 'none'}")
        ok &= sum(dlq.values()) == scenario.invalid
        verify = subprocess.run(
            [sys.executable, "-m", "infrastructure.cli.main", "verify"],
            env=env,
            cwd=ROOT,
            check=False,
        )
        ok &= verify.returncode == 0
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
        if broker:
            broker.stop()
    console.print(
        "[green]every batch reached its expected outcome[/]"
        if ok
        else "[red]some batches did not reach their expected outcome[/]"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
