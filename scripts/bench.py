"""Benchmark (issue #7): how fast is the batch slot service, against baselines of the same run.

    python scripts/bench.py [--quick] [--json FILE]

Sections (all measured in this one run, on this machine, everything on it):

1. limit     single-row INSERT transactions/s into PostgreSQL, 1 and 4 client processes
2. naive     the library's default per-command load-and-save (plain Application, no cache,
             no snapshots, no grouping), one command per transaction
3. service   BatchService.execute as the worker calls it (polls of commands, grouped per
             batch), 1 and 4 worker PROCESSES sharing one event store; parsing excluded
4. e2e       through the real broker: produce inbound messages, `batchctl run` as a
             subprocess, until every BatchCompleted is on batch.events.v1 and the Redis
             read model has caught up; at full rate and at half that rate
5. scaling   per-command cost in a 25-slot and a 5,000-slot batch (one command per
             execute); service RSS after 1,000 and after 50,000 batches

Everything runs in scratch PostgreSQL schemas (dropped afterwards, database
``batchslot_bench`` unless BENCH_DATABASE_URL says otherwise) and a scratch Redis
key prefix; the broker is a fresh local Tansu on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing as mp
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import redis  # noqa: E402
from eventsourcing.application import AggregateNotFoundError, Application  # noqa: E402
from psycopg import sql  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from application.commands import (  # noqa: E402
    AnyCommand,
    ProvisionContent,
    RecordValidationFailure,
    RegisterBatch,
)
from application.messages import parse_message  # noqa: E402
from domain import Batch, BatchRejection  # noqa: E402
from infrastructure.bootstrap import Bootstrap  # noqa: E402
from infrastructure.kafka import ensure_topics, make_consumer, make_producer  # noqa: E402
from infrastructure.local_broker import LocalBroker  # noqa: E402
from infrastructure.postgres import conninfo, ensure_database, event_store_env  # noqa: E402
from infrastructure.redis_view import RedisSlotView  # noqa: E402
from infrastructure.settings import Settings, load_settings  # noqa: E402
from tests.support.scenario import Scenario, generate_load  # noqa: E402

console = Console(width=None if sys.stdout.isatty() else 150)
BENCH_DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/batchslot_bench"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
POLL = 500  # commands per worker poll in section 3 (the worker asks for up to 1000)


@dataclass(frozen=True)
class Sizes:
    limit_seconds: float
    naive_commands: int
    service_batches: int
    e2e_full_batches: int
    e2e_half_batches: int
    big_slots: int
    big_commands: int
    small_batches: int
    memory_batches: tuple[int, int]


FULL = Sizes(5.0, 3000, 600, 1900, 800, 5000, 5000, 40, (1000, 50_000))
QUICK = Sizes(2.0, 800, 150, 300, 150, 5000, 1500, 20, (1000, 5000))


# ---------------------------------------------------------------- helpers


def new_settings(tag: str, **extra: str) -> Settings:
    env = {
        "DATABASE_URL": BENCH_DATABASE_URL,
        "DATABASE_SCHEMA": f"bench_{tag}",
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": f"bench:{tag}:",
        "LOG_LEVEL": "WARNING",
        **extra,
    }
    return load_settings(env)


def settings_env(s: Settings) -> dict[str, str]:
    env = {
        "DATABASE_URL": s.database_url.get_secret_value(),
        "DATABASE_SCHEMA": s.database_schema,
        "REDIS_URL": s.redis_url.get_secret_value(),
        "REDIS_KEY_PREFIX": s.redis_key_prefix,
        "LOG_LEVEL": os.environ.get("BENCH_SERVICE_LOG_LEVEL", "WARNING"),
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
    }
    return env


def drop_scratch(s: Settings) -> None:
    with psycopg.connect(**conninfo(s), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(s.database_schema))
        )
    client = redis.Redis.from_url(s.redis_url.get_secret_value())
    keys = list(client.scan_iter(match=f"{s.redis_key_prefix}*", count=5000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])
    client.close()


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def commands_of(scenario: Scenario) -> list[AnyCommand]:
    return [parse_message(m.kind, m.value) for m in scenario.messages]


def apply_command(batch: Batch, command: AnyCommand, now: datetime) -> None:
    cid = command.correlation_id
    if isinstance(command, RegisterBatch):
        batch.register(list(command.essay_ids), now, 86400, cid)
    elif isinstance(command, ProvisionContent):
        batch.provision_content(
            command.text_storage_id, command.file_upload_id, command.original_file_name, now, cid
        )
    elif isinstance(command, RecordValidationFailure):
        batch.record_validation_failure(
            command.file_upload_id, command.original_file_name, command.error_code, now, cid
        )


def spawn(
    target: Callable[..., None], args_per_proc: list[tuple[Any, ...]]
) -> tuple[float, list[dict[str, Any]]]:
    """Run ``target(*args, ready, results, go)`` in fresh processes started together."""
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=target, args=(*a, ready, results, go)) for a in args_per_proc]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=180)
    start = time.monotonic()
    go.set()
    out = [results.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(30)
    return start, out


# ------------------------------------------------------------ 1. the limit


def _insert_client(
    dsn: dict[str, Any], schema: str, seconds: float, ready: Any, results: Any, go: Any
) -> None:
    insert = sql.SQL("INSERT INTO {} (v) VALUES (%s)").format(sql.Identifier(schema, "scratch"))
    with psycopg.connect(**dsn, autocommit=True) as conn:
        ready.put(1)
        go.wait()
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            conn.execute(insert, ("x" * 64,))
            n += 1
    results.put({"n": n, "end": time.monotonic()})


def bench_limit(sizes: Sizes) -> dict[str, Any]:
    s = new_settings("limit_" + uuid.uuid4().hex[:6])
    ensure_database(s)
    dsn = conninfo(s)
    table = s.database_schema  # the scratch table lives in this schema
    with psycopg.connect(**dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, v text NOT NULL)").format(
                sql.Identifier(table, "scratch")
            )
        )
    out: dict[str, Any] = {}
    try:
        for clients in (1, 4):
            start, res = spawn(_insert_client, [(dsn, table, sizes.limit_seconds)] * clients)
            total = sum(r["n"] for r in res)
            elapsed = max(r["end"] for r in res) - start
            out[f"tx_per_s_{clients}"] = total / elapsed
    finally:
        drop_scratch(s)
    return out


# ---------------------------------------------------------- 2. naive baseline


class NaiveApp(Application[UUID]):
    """What a user writes first: load, decide, save; the library's defaults."""

    name = "NaiveBench"


def bench_naive(sizes: Sizes) -> dict[str, Any]:
    s = new_settings("naive_" + uuid.uuid4().hex[:6])
    ensure_database(s)
    env = event_store_env(s)
    env.pop("AGGREGATE_CACHE_MAXSIZE", None)  # the library default: no cache
    app = NaiveApp(env=env)
    scenario = generate_load("naive", max(1, sizes.naive_commands // 27), 25)
    commands = commands_of(scenario)[: sizes.naive_commands]
    latencies: list[float] = []
    try:
        start = time.perf_counter()
        for command in commands:
            t = time.perf_counter()
            now = datetime.now(UTC)
            try:
                batch: Batch = app.repository.get(Batch.create_id(command.batch_id))
            except AggregateNotFoundError:
                batch = Batch.start(command.batch_id, now)
            with contextlib.suppress(BatchRejection):
                apply_command(batch, command, now)
            app.save(batch)
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
    finally:
        app.close()
        drop_scratch(s)
    return {
        "commands": len(commands),
        "commands_per_s": len(commands) / elapsed,
        "p50_ms": pct(latencies, 50) * 1000,
        "p99_ms": pct(latencies, 99) * 1000,
    }


# ------------------------------------------------------ 3. the service path


def _service_worker(
    env: dict[str, str], commands: list[AnyCommand], poll: int, ready: Any, results: Any, go: Any
) -> None:
    service = Bootstrap(load_settings(env)).batch_service()
    ready.put(1)
    go.wait()
    latencies: list[tuple[float, int]] = []
    for i in range(0, len(commands), poll):
        chunk = commands[i : i + poll]
        t = time.monotonic()
        service.execute(chunk)
        latencies.append((time.monotonic() - t, len(chunk)))
    end = time.monotonic()
    service.close()
    results.put({"n": len(commands), "end": end, "latencies": latencies, "rss": rss_mib()})


def partition_of(batch_id: str, n: int) -> int:
    return zlib.crc32(batch_id.encode()) % n


def bench_service(sizes: Sizes, commands: list[AnyCommand]) -> dict[str, Any]:
    out: dict[str, Any] = {"commands": len(commands), "poll": POLL}
    for workers in (1, 4):
        s = new_settings(f"svc{workers}_" + uuid.uuid4().hex[:6])
        ensure_database(s)
        Bootstrap(s).batch_service().close()  # create the tables before the clock starts
        shares: list[list[AnyCommand]] = [[] for _ in range(workers)]
        for c in commands:
            shares[partition_of(c.batch_id, workers)].append(c)
        try:
            start, res = spawn(_service_worker, [(settings_env(s), sh, POLL) for sh in shares])
        finally:
            drop_scratch(s)
        elapsed = max(r["end"] for r in res) - start
        per_command = [lat for r in res for lat, n in r["latencies"] for _ in range(n)]
        out[f"workers_{workers}"] = {
            "commands_per_s": len(commands) / elapsed,
            "p50_ms": pct(per_command, 50) * 1000,
            "p99_ms": pct(per_command, 99) * 1000,
        }
    return out


# ----------------------------------------------------------- 4. end to end


class E2EProbe:
    """Reads batch.events.v1 for the whole section; samples the projection lag."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.send_time: dict[str, float] = {}
        self.slot_latency: dict[str, list[float]] = {}
        self.completed: dict[str, set[bytes]] = {}
        self.last_event: dict[str, float] = {}
        self.samples: list[tuple[float, int, int]] = []  # (time, head, projected)
        self._stop = threading.Event()
        self.view = RedisSlotView.from_settings(settings)
        self.table = sql.Identifier(settings.database_schema, "batchservice_events")

    async def consume(self, stop: asyncio.Event) -> None:
        consumer = make_consumer(
            self.settings, self.settings.topics.events, group_id=None, fetch_max_wait_ms=20
        )
        await consumer.start()
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=100, max_records=5000)
                now = time.monotonic()
                for records in batches.values():
                    for r in records:
                        tag = r.key.split(b"-b", 1)[0].decode()
                        headers = dict(r.headers)
                        kind = headers["event_type"]
                        self.last_event[tag] = now
                        if kind == b"SlotAssigned":
                            sent = self.send_time.get(headers["correlation_id"].decode())
                            if sent is not None:
                                self.slot_latency.setdefault(tag, []).append(now - sent)
                        elif kind == b"BatchCompleted":
                            self.completed.setdefault(tag, set()).add(r.key)
        finally:
            await consumer.stop()

    def head(self, conn: psycopg.Connection[Any]) -> int:
        query = sql.SQL("SELECT coalesce(max(notification_id), 0) FROM {}").format(self.table)
        row = conn.execute(query).fetchone()
        return int(row[0]) if row else 0

    def sample(self) -> None:
        with psycopg.connect(**conninfo(self.settings), autocommit=True) as conn:
            while not self._stop.wait(0.05):
                with contextlib.suppress(psycopg.Error, redis.RedisError):
                    head = self.head(conn)
                    self.samples.append((time.monotonic(), head, self.view.position() or 0))

    def start_sampling(self) -> threading.Thread:
        t = threading.Thread(target=self.sample, daemon=True)
        t.start()
        return t

    def stop_sampling(self) -> None:
        self._stop.set()

    def lag(self, t0: float, t1: float) -> dict[str, float]:
        window = [s for s in self.samples if t0 <= s[0] <= t1]
        events = [float(head - pos) for _, head, pos in window]
        seconds = []
        for i, (t, head, _) in enumerate(window):
            caught = next((u for u, _, pos in window[i:] if pos >= head), None)
            if caught is not None:
                seconds.append(caught - t)
        return {
            "p99_events": pct(events, 99),
            "p99_ms": pct(seconds, 99) * 1000,
            "max_events": max(events, default=float("nan")),
        }


async def produce(
    settings: Settings, probe: E2EProbe, scenario: Scenario, rate: float | None
) -> float:
    topic = settings.topics.by_kind
    cids = [json.loads(m.value)["correlation_id"] for m in scenario.messages]
    producer = make_producer(settings)
    await producer.start()
    start = time.monotonic()
    try:
        pending = []
        for i, (m, cid) in enumerate(zip(scenario.messages, cids, strict=True)):
            if rate is not None:
                due = start + i / rate
                delay = due - time.monotonic()
                if delay > 0.002:
                    await asyncio.sleep(delay)
            probe.send_time.setdefault(cid, time.monotonic())
            pending.append(await producer.send(topic[m.kind], value=m.value, key=m.key.encode()))
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return start


async def e2e_phase(
    settings: Settings, probe: E2EProbe, scenario: Scenario, rate: float | None, wait: float
) -> dict[str, Any]:
    tag = next(iter(scenario.expected)).split("-b", 1)[0]
    batches = len(scenario.expected)
    start = await produce(settings, probe, scenario, rate)
    produced = time.monotonic()
    deadline = time.monotonic() + wait
    while len(probe.completed.get(tag, ())) < batches and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    all_completed = time.monotonic()
    with psycopg.connect(**conninfo(settings), autocommit=True) as conn:
        head = probe.head(conn)
    while (probe.view.position() or 0) < head and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    consistent = time.monotonic()
    commands = len(scenario.messages)
    latencies = probe.slot_latency.get(tag, [])
    return {
        "batches": batches,
        "commands": commands,
        "completed": len(probe.completed.get(tag, ())),
        "offered_rate": rate,
        "produce_s": produced - start,
        "seconds": consistent - start,
        "commands_per_s": commands / (consistent - start),
        "completed_after_s": all_completed - start,
        "slot_p50_ms": pct(latencies, 50) * 1000,
        "slot_p99_ms": pct(latencies, 99) * 1000,
        "slot_samples": len(latencies),
        **{f"projection_lag_{k}": v for k, v in probe.lag(start, consistent).items()},
    }


def check_read_model(settings: Settings, scenario: Scenario) -> int:
    view = RedisSlotView.from_settings(settings)
    wrong = 0
    try:
        for batch_id, exp in scenario.expected.items():
            model = view.read_batch(batch_id)
            summary = model.summary if model else {}
            # Which content turns into excess depends on arrival order; the sums do not.
            assigned, excess = int(summary.get("assigned", -1)), int(summary.get("excess", -1))
            wrong += not (
                summary.get("status") == "completed"
                and summary.get("failed") == str(exp.failed)
                and assigned + excess == exp.assigned + exp.excess
                and assigned + exp.failed >= exp.slots
            )
    finally:
        view.close()
    return wrong


def bench_e2e(sizes: Sizes, mode: str) -> dict[str, Any]:
    broker = LocalBroker(log_path=ROOT / "var" / "bench-broker.log").start()
    s = new_settings(
        "e2e_" + uuid.uuid4().hex[:6], KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers
    )
    ensure_database(s)
    asyncio.run(ensure_topics(s))
    env = {**os.environ, **settings_env(s)}
    log = open(ROOT / "var" / "bench-service.log", "ab")  # noqa: SIM115
    parts = (
        ["run --no-local-broker"] if mode == "run" else ["worker", "worker", "projector", "outbox"]
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "infrastructure.cli.main", *p.split()],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for p in parts
    ]
    full = generate_load("full", sizes.e2e_full_batches, 25, seed=21)
    half = generate_load("half", sizes.e2e_half_batches, 25, seed=22)
    out: dict[str, Any] = {"mode": mode, "processes": parts}
    probe = E2EProbe(s)

    async def main() -> None:
        stop = asyncio.Event()
        consumer = asyncio.create_task(probe.consume(stop))
        try:
            warm = await e2e_phase(s, probe, generate_load("warm", 20, 25, seed=1), None, 90)
            if warm["completed"] < warm["batches"]:
                raise RuntimeError("the service did not complete the warm-up batches")
            sampler = probe.start_sampling()
            console.print(f"  full rate: {len(full.messages)} commands ...")
            out["full"] = await e2e_phase(s, probe, full, None, 600)
            console.print(f"    {out['full']['commands_per_s']:.0f} commands/s")
            rate = out["full"]["commands_per_s"] / 2
            await asyncio.sleep(1.0)
            console.print(f"  half rate ({rate:.0f}/s): {len(half.messages)} commands ...")
            out["half"] = await e2e_phase(s, probe, half, rate, 600)
            probe.stop_sampling()
            sampler.join(5)
        finally:
            stop.set()
            await consumer

    try:
        asyncio.run(main())
        out["service_rss_mib"] = sum(rss_mib(p.pid) for p in procs)
        wrong = check_read_model(s, full) + check_read_model(s, half)
        verify = subprocess.run(
            [sys.executable, "-m", "infrastructure.cli.main", "verify", "--json"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            check=False,
        )
        out["read_model_wrong_batches"] = wrong
        out["verify_exit"] = verify.returncode
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()
        probe.view.close()
        broker.stop()
        drop_scratch(s)
    return out


# --------------------------------------------------------------- 5. scaling


def _per_command(env: dict[str, str], commands: list[AnyCommand], skip: int) -> dict[str, float]:
    service = Bootstrap(load_settings(env)).batch_service()
    try:
        times = []
        for i, c in enumerate(commands):
            t = time.perf_counter()
            service.execute([c])
            if i >= skip:
                times.append(time.perf_counter() - t)
    finally:
        service.close()
    return {"mean_ms": statistics.fmean(times) * 1000, "p50_ms": pct(times, 50) * 1000}


def _content_commands(batch_id: str, slots: int, count: int) -> list[AnyCommand]:
    cid = str(uuid.uuid4())
    out: list[AnyCommand] = [
        RegisterBatch(
            batch_id=batch_id,
            correlation_id=cid,
            essay_ids=[f"{batch_id}-e{i}" for i in range(slots)],
        )
    ]
    out += [
        ProvisionContent(
            batch_id=batch_id,
            correlation_id=cid,
            text_storage_id=f"{batch_id}-t{i}",
            file_upload_id=f"{batch_id}-f{i}",
            original_file_name="essay.docx",
        )
        for i in range(count)
    ]
    return out


def _memory_worker(
    env: dict[str, str], marks: tuple[int, int], ready: Any, results: Any, go: Any
) -> None:
    service = Bootstrap(load_settings(env)).batch_service()
    ready.put(1)
    go.wait()
    rss: dict[int, float] = {}
    poll: list[AnyCommand] = []
    start = time.monotonic()
    for b in range(marks[1]):
        poll += _content_commands(f"mem-b{b:06d}", 2, 2)
        if len(poll) >= POLL or b + 1 in marks:
            service.execute(poll)
            poll = []
        if b + 1 in marks:
            gc.collect()
            rss[b + 1] = rss_mib()
    service.execute(poll)
    results.put({"rss": rss, "seconds": time.monotonic() - start, "end": time.monotonic()})
    service.close()


def bench_scaling(sizes: Sizes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    s = new_settings("scale_" + uuid.uuid4().hex[:6])
    ensure_database(s)
    try:
        small: list[AnyCommand] = []
        for b in range(sizes.small_batches):
            small += _content_commands(f"small-b{b}", 25, 25)
        out["slots_25"] = _per_command(settings_env(s), small, skip=0)
        big = _content_commands("big-b0", sizes.big_slots, sizes.big_commands)
        out["slots_5000"] = {**_per_command(settings_env(s), big, skip=1), "commands": len(big) - 1}
    finally:
        drop_scratch(s)
    m = new_settings("mem_" + uuid.uuid4().hex[:6])
    ensure_database(m)
    try:
        _, res = spawn(_memory_worker, [(settings_env(m), sizes.memory_batches)])
        out["memory"] = {
            "batches": list(sizes.memory_batches),
            "rss_mib": {str(k): v for k, v in res[0]["rss"].items()},
            "commands_per_s": 3 * sizes.memory_batches[1] / res[0]["seconds"],
        }
    finally:
        drop_scratch(m)
    return out


# -------------------------------------------------------------- the report


def machine() -> dict[str, Any]:
    s = new_settings("machine")
    with psycopg.connect(**conninfo(s, "postgres"), autocommit=True) as conn:
        pg = conn.execute("SHOW server_version").fetchone()
        sync = conn.execute("SHOW synchronous_commit").fetchone()
        fsync = conn.execute("SHOW fsync").fetchone()
    client = redis.Redis.from_url(REDIS_URL)
    redis_version = client.info("server")["redis_version"]
    client.close()
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(int(mem) / 1024 / 1024, 1),
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        ),
        "python": platform.python_version(),
        "postgresql": pg[0] if pg else "?",
        "pg_synchronous_commit": sync[0] if sync else "?",
        "pg_fsync": fsync[0] if fsync else "?",
        "redis": redis_version,
        "kernel": platform.release(),
    }


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    limit1 = r["limit"]["tx_per_s_1"]
    svc1 = r["service"]["workers_1"]["commands_per_s"]
    naive = r["naive"]["commands_per_s"]
    full = r["e2e"]["full"]
    half = r["e2e"]["half"]
    small = r["scaling"]["slots_25"]["mean_ms"]
    big = r["scaling"]["slots_5000"]["mean_ms"]
    rss = r["scaling"]["memory"]["rss_mib"]
    lo, hi = (rss[str(b)] for b in r["scaling"]["memory"]["batches"])
    rows = [
        ("service, 1 worker >= 50% of the 1-client insert limit", svc1 / limit1, 0.5, ">="),
        ("e2e full rate >= 3,000 commands/s", full["commands_per_s"], 3000, ">="),
        ("e2e full rate over >= 50,000 commands", full["commands"], 50000, ">="),
        ("e2e full rate >= 10x the naive baseline", full["commands_per_s"] / naive, 10, ">="),
        ("p99 produce->SlotAssigned at half rate <= 100 ms", half["slot_p99_ms"], 100, "<="),
        ("5,000-slot per-command cost <= 1.5x the 25-slot cost", big / small, 1.5, "<="),
        ("RSS growth between the two memory marks <= 10%", hi / lo - 1, 0.10, "<="),
    ]
    out = []
    for name, value, target, op in rows:
        met = value >= target if op == ">=" else value <= target
        out.append(
            {
                "target": name,
                "value": value,
                "goal": target,
                "op": op,
                "met": met,
                "distance": value - target,
            }
        )
    return out


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def report(r: dict[str, Any]) -> None:
    limit1 = r["limit"]["tx_per_s_1"]
    naive = r["naive"]["commands_per_s"]
    t = Table(title=f"Benchmark ({'quick' if r['quick'] else 'full'} run)")
    for col in ("section", "figure", "value", "x 1-client limit", "x naive"):
        t.add_column(col, justify="right" if col != "figure" else "left")

    def row(section: str, figure: str, value: float, rate: bool = False) -> None:
        t.add_row(
            section,
            figure,
            fmt(value),
            f"{value / limit1:.2f}" if rate else "",
            f"{value / naive:.1f}" if rate else "",
        )

    row("1 limit", "INSERT tx/s, 1 client", limit1, True)
    row("1 limit", "INSERT tx/s, 4 clients (processes)", r["limit"]["tx_per_s_4"], True)
    row("2 naive", "commands/s (load+save per command)", naive, True)
    row("2 naive", "p50 / p99 ms", r["naive"]["p50_ms"])
    t.add_row("", "", f"{r['naive']['p99_ms']:.1f}")
    for w in (1, 4):
        sv = r["service"][f"workers_{w}"]
        row(
            "3 service",
            f"commands/s, {w} worker process(es), poll {POLL}",
            sv["commands_per_s"],
            True,
        )
        row("3 service", f"p50 ms ({w}w; a command waits for its poll)", sv["p50_ms"])
        row("3 service", f"p99 ms ({w}w)", sv["p99_ms"])
    for phase in ("full", "half"):
        e = r["e2e"][phase]
        row(f"4 e2e {phase}", f"commands/s ({e['commands']:,} commands)", e["commands_per_s"], True)
        row(f"4 e2e {phase}", "p50 produce->SlotAssigned ms", e["slot_p50_ms"])
        row(f"4 e2e {phase}", "p99 produce->SlotAssigned ms", e["slot_p99_ms"])
        row(f"4 e2e {phase}", "p99 projection lag, events", e["projection_lag_p99_events"])
        row(f"4 e2e {phase}", "p99 projection lag, ms", e["projection_lag_p99_ms"])
    row("4 e2e", "service RSS MiB / verify exit / wrong batches", r["e2e"]["service_rss_mib"])
    t.add_row("", "", f"{r['e2e']['verify_exit']} / {r['e2e']['read_model_wrong_batches']}")
    sc = r["scaling"]
    row("5 scaling", "per-command ms, 25-slot batches", sc["slots_25"]["mean_ms"])
    row(
        "5 scaling",
        f"per-command ms, 5,000-slot batch ({sc['slots_5000']['commands']:,} cmds)",
        sc["slots_5000"]["mean_ms"],
    )
    for b, v in sc["memory"]["rss_mib"].items():
        row("5 scaling", f"service RSS MiB after {int(b):,} batches", v)
    console.print(t)
    tt = Table(title="Targets")
    for col in ("target", "measured", "goal", "met", "distance"):
        tt.add_column(col)
    for x in r["targets"]:
        tt.add_row(
            x["target"],
            fmt(x["value"]),
            f"{x['op']} {fmt(x['goal'])}",
            "[green]met[/]" if x["met"] else "[red]not met[/]",
            f"{x['distance']:+,.3f}",
        )
    console.print(tt)
    if r["quick"]:
        console.print(
            "[yellow]--quick: fewer commands than the targets ask for "
            f"(e2e {r['e2e']['full']['commands']:,} commands, memory marks "
            f"{sc['memory']['batches']}); run without --quick for the real figures[/]"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smaller run (about 2 minutes)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument(
        "--e2e-mode",
        choices=("run", "split"),
        default="run",
        help="run: one `batchctl run`; split: 2 workers + projector + outbox processes",
    )
    p.add_argument(
        "--only",
        help="comma-separated sections to run (limit,naive,service,e2e,"
        "scaling); the targets need all of them",
    )
    args = p.parse_args()
    sizes = QUICK if args.quick else FULL
    (ROOT / "var").mkdir(exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    r: dict[str, Any] = {
        "quick": args.quick,
        "sizes": sizes.__dict__,
        "machine": machine(),
        "started": datetime.now(UTC).isoformat(),
    }
    t0 = time.monotonic()

    def section(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        if only is not None and name not in only:
            return
        console.print(f"[bold]{name}[/] ...")
        t = time.monotonic()
        r[name] = fn()
        console.print(
            f"  done in {time.monotonic() - t:.1f}s: {json.dumps(r[name], default=str)[:300]}"
        )

    section("limit", lambda: bench_limit(sizes))
    section("naive", lambda: bench_naive(sizes))
    if only is None or "service" in only:
        scenario = generate_load("svc", sizes.service_batches, 25, seed=5)
        commands = commands_of(scenario)
        section("service", lambda: bench_service(sizes, commands))
    section("e2e", lambda: bench_e2e(sizes, args.e2e_mode))
    section("scaling", lambda: bench_scaling(sizes))
    r["seconds"] = time.monotonic() - t0
    if only is None:
        r["targets"] = targets(r)
        report(r)
    if args.json:
        args.json.write_text(json.dumps(r, indent=2, default=str))
        console.print(f"results written to {args.json}")
    console.print(f"total {r['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
