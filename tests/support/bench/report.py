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
    """The speed targets (and the first round's that still hold), from one run's figures."""
    limit1 = r["limit"]["tx_per_s_1"]
    svc1 = r["service"]["workers_1"]["commands_per_s"]
    naive = r["naive"]["commands_per_s"]
    drain = r["e2e"]["drain"]
    paced = r["e2e"]["paced"]
    split = r["split"]["drain"]
    small = r["scaling"]["slots_25"]["mean_ms"]
    big = r["scaling"]["slots_5000"]["mean_ms"]
    rss = r["scaling"]["memory"]["rss_mib"]
    lo, hi = (rss[str(b)] for b in r["scaling"]["memory"]["batches"])
    rows = [
        ("service, 1 worker >= 50% of the 1-client insert limit", svc1 / limit1, 0.5, ">="),
        ("e2e run mode drain >= 3,500 commands/s", drain["commands_per_s"], 3500, ">="),
        ("e2e drain over >= 50,000 commands", drain["commands"], 50000, ">="),
        ("e2e run mode drain >= 12x the naive baseline", drain["commands_per_s"] / naive, 12, ">="),
        (
            "split mode drain not slower than run mode (ratio)",
            split["commands_per_s"] / drain["commands_per_s"],
            1.0,
            ">=",
        ),
        ("p50 produce->SlotAssigned at half rate <= 20 ms", paced["slot_p50_ms"], 20, "<="),
        ("p99 produce->SlotAssigned at half rate <= 50 ms", paced["slot_p99_ms"], 50, "<="),
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
    sv = r["service"]["workers_1"]
    row("3 service", f"commands/s, 1 worker, poll {POLL}", sv["commands_per_s"], True)
    row("3 service", "p50 / p99 ms (a command waits for its poll)", sv["p50_ms"])
    t.add_row("", "", f"{sv['p99_ms']:.1f}")
    for name, label in (("e2e", "4 e2e run"), ("split", "5 e2e split")):
        e = r[name]
        d, pc = e["drain"], e["paced"]
        row(label, f"drain commands/s ({d['commands']:,} commands)", d["commands_per_s"], True)
        row(label, "drain: first output after start, s", d["startup_s"])
        row(label, "drain: p99 projection lag, events", d["projection_lag_p99_events"])
        row(
            label,
            f"paced at {pc['offered_rate']:,.0f}/s: p50 produce->SlotAssigned ms",
            pc["slot_p50_ms"],
        )
        row(label, "paced: p99 produce->SlotAssigned ms", pc["slot_p99_ms"])
        row(label, "paced: p99 projection lag, ms", pc["projection_lag_p99_ms"])
        if "light" in e:
            lt = e["light"]
            row(label, "light load 200/s: p50 produce->SlotAssigned ms", lt["slot_p50_ms"])
            row(label, "light load 200/s: p99 produce->SlotAssigned ms", lt["slot_p99_ms"])
        row(label, "service RSS MiB / verify exit / wrong batches", e["service_rss_mib"])
        t.add_row("", "", f"{e['verify_exit']} / {e['read_model_wrong_batches']}")
    sc = r["scaling"]
    row("5 scaling", "per-command ms, 25-slot batches", sc["slots_25"]["mean_ms"])
    row(
        "5 scaling",
        f"per-command ms, 5,000-slot batch ({sc['slots_5000']['commands']:,} cmds)",
        sc["slots_5000"]["mean_ms"],
    )
    for b, v in sc["memory"]["rss_mib"].items():
        row("5 scaling", f"service RSS MiB after {int(b):,} batches", v)
    if "scale" in r:
        for w, v in r["scale"]["service"].items():
            if w.startswith("workers_"):
                row(
                    "7 scale",
                    f"command path, {w[8:]} worker process(es)",
                    v["commands_per_s"],
                    True,
                )
        for w, v in r["scale"]["e2e_split_6_partitions"].items():
            row(
                "7 scale",
                f"e2e split drain, {w[8:]} worker(s), 6 partitions",
                v["commands_per_s"],
                True,
            )
    if "keys" in r:
        for phase, c in r["keys"]["file_vs_batch"].items():
            f = r["keys"]["by_file"][phase]
            row(
                "8 keys",
                f"{phase}: commands/s keyed by file (x keyed by batch: "
                f"{c['commands_per_s_ratio']:.2f})",
                f["commands_per_s"],
                True,
            )
            row(
                "8 keys",
                f"{phase}: conflicts per 1,000 commands, by file / by batch",
                c["conflicts_per_1000_by_file"],
            )
            t.add_row("", "", fmt(c["conflicts_per_1000_by_batch"]))
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
            f"(e2e {r['e2e']['drain']['commands']:,} commands, memory marks "
            f"{sc['memory']['batches']}); run without --quick for the real figures[/]"
        )
