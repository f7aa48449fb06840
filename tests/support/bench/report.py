"""The benchmark's report: the machine, the targets and the tables."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import psycopg
import redis
from rich.table import Table

from infrastructure.postgres.store import conninfo
from tests.support.bench.common import POLL, REDIS_URL, console, new_settings

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
