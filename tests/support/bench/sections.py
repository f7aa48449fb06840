"""Sections 1, 2, 3 and 5 of the benchmark: the limit, the naive baseline, the service, scaling."""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.application import AggregateNotFoundError, Application
from psycopg import sql

from application.commands import AnyCommand, ProvisionContent, RegisterBatch
from application.service import apply_command
from domain import Batch, BatchRejection
from infrastructure.bootstrap import Bootstrap
from infrastructure.postgres.store import conninfo, ensure_database, event_store_env
from infrastructure.settings import load_settings
from tests.support.bench.common import (
    POLL,
    Sizes,
    commands_of,
    new_settings,
    partition_of,
    pct,
    rss_mib,
    scratch_tag,
    settings_env,
    spawn,
)
from tests.support.scenario import generate_load
from tests.support.scratch import drop_scratch

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
    s = new_settings(scratch_tag("limit"))
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
    s = new_settings(scratch_tag("naive"))
    ensure_database(s)
    env = event_store_env(s)
    env.pop("AGGREGATE_CACHE_MAXSIZE", None)  # the library default: no cache
    # The library's own recorder (pipelined), not the project's one-statement append:
    # the baseline is what the library gives, not what this project built on it.
    env.pop("APPLICATION_RECORDER_TOPIC", None)
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
                apply_command(batch, command, now, timeout_seconds=86400, pending_ttl_seconds=86400)
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
    cpu = time.process_time()
    for i in range(0, len(commands), poll):
        chunk = commands[i : i + poll]
        t = time.monotonic()
        service.execute(chunk)
        latencies.append((time.monotonic() - t, len(chunk)))
    end = time.monotonic()
    cpu = time.process_time() - cpu
    service.close()
    results.put(
        {"n": len(commands), "end": end, "latencies": latencies, "rss": rss_mib(), "cpu": cpu}
    )


def bench_service(
    sizes: Sizes, commands: list[AnyCommand], workers_list: tuple[int, ...] = (1,)
) -> dict[str, Any]:
    out: dict[str, Any] = {"commands": len(commands), "poll": POLL}
    for workers in workers_list:
        s = new_settings(scratch_tag(f"svc{workers}"))
        ensure_database(s)
        Bootstrap(s).batch_service().close()  # create the tables before the clock starts
        shares: list[list[AnyCommand]] = [[] for _ in range(workers)]
        for c in commands:  # 6 partitions shared out as a consumer group would (4 -> 2,2,1,1)
            shares[partition_of(c.batch_id, 6) % workers].append(c)
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
            # the worker processes' own CPU (not PostgreSQL's): robust to a busy machine
            "cpu_s_per_1000": sum(r["cpu"] for r in res) * 1000 / len(commands),
        }
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
    s = new_settings(scratch_tag("scale"))
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
    m = new_settings(scratch_tag("mem"))
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
