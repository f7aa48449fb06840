"""What the benchmark's sections share: sizes, scratch settings, percentiles, processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from application.commands import AnyCommand
from application.messages import parse_message
from infrastructure.settings import Settings
from tests.support.scenario import Scenario
from tests.support.scratch import new_tag, scratch_settings

ROOT = Path(__file__).resolve().parents[3]
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


def new_settings(tag: str, **extra: str) -> Settings:
    """A scratch schema and Redis key prefix in the benchmark's database."""
    return scratch_settings(
        BENCH_DATABASE_URL,
        REDIS_URL,
        schema=f"bench_{tag}",
        key_prefix=f"bench:{tag}:",
        LOG_LEVEL="WARNING",
        **extra,
    )


def scratch_tag(section: str) -> str:
    return f"{section}_{new_tag(6)}"


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


def partition_of(batch_id: str, n: int) -> int:
    return zlib.crc32(batch_id.encode()) % n
