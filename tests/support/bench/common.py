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
    scale_batches: int  # the end-to-end scaling rows (drain only)
    e2e_light_batches: int  # the light-load phase (200 commands/s)


FULL = Sizes(5.0, 3000, 600, 1900, 800, 5000, 5000, 40, (1000, 50_000), 600, 100)
QUICK = Sizes(2.0, 800, 150, 300, 150, 5000, 1500, 20, (1000, 5000), 150, 40)


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


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def pids_named(*names: str) -> list[int]:
    """Every process whose command name is one of ``names`` (machine-wide)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                comm = (d / "comm").read_text().strip()
            except OSError:
                continue
            if comm in names:
                out.append(int(d.name))
    return out


class CpuMeter:
    """CPU seconds per component between ``start()`` and ``stop()``. PostgreSQL and Redis
    are counted machine-wide (every backend): other sessions' work on them counts too."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self.before: dict[int, float] = {}

    def _all(self) -> dict[str, list[int]]:
        return {
            **self.pids,
            "postgres": pids_named("postgres"),
            "redis": pids_named("redis-server"),
            "benchmark": [os.getpid()],
        }

    def start(self) -> None:
        self.before = {p: cpu_seconds(p) for ps in self._all().values() for p in ps}

    def stop(self) -> dict[str, float]:
        return {
            name: sum(cpu_seconds(p) - self.before.get(p, 0.0) for p in ps)
            for name, ps in self._all().items()
        }


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
