"""Benchmark: how fast is the service, against baselines of the same run.

    python scripts/bench.py [--quick] [--json FILE] [--only SECTIONS] [--profile]

Sections (all measured in this one run, on this machine, everything on it):

1. limit     single-row INSERT transactions/s into PostgreSQL, 1 and 4 client processes
2. naive     the library's default per-command load-and-save (plain Application, no cache,
             no snapshots, no grouping), one command per transaction
3. service   BatchService.execute as the worker calls it (polls of parsed commands), 1 worker
4. e2e       `batchctl run` through the real broker: a backlog of >= 50,000 commands
             produced BEFORE the service starts (drain rate), then a paced phase at half
             the drain rate with one long-lived producer (produce -> SlotAssigned latency)
5. split     the same with 2 workers + projector + outbox as separate processes
   replicas  the same with 2 `batchctl run` replicas (the followers spread by their leases)
6. scaling   per-command cost in a 25-slot and a 5,000-slot batch (one command per
             execute); service RSS after 1,000 and after 50,000 batches
7. scale     command path with 1, 2 and 4 worker processes, and end to end in
             split mode with 1, 2 and 4 workers on 6 partitions (drain only)
8. keys      split mode (2 workers) with HuleEdu's real keys: content and validation
             failures keyed by file_upload_id vs by batch id (drain, paced, light),
             as ratios, with the version conflicts every process counts on /metrics

Everything runs in scratch PostgreSQL schemas (dropped afterwards, database
``batchslot_bench`` unless BENCH_DATABASE_URL says otherwise) and a scratch Redis
key prefix; the broker is a fresh local Tansu on a free port per e2e run. The
sections live in ``tests/support/bench/``; this file parses the options and runs them.
``--profile run|split`` runs that e2e mode only, every service process under ``py-spy``
(raw folded stacks in var/profile-*.txt; see docs/benchmarks.md for the breakdown).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # tests.support is not an installed package
    sys.path.insert(0, str(ROOT))

from tests.support.bench.common import FULL, QUICK, Sizes, commands_of, console  # noqa: E402
from tests.support.bench.e2e import bench_e2e, bench_keys, bench_scale_e2e  # noqa: E402
from tests.support.bench.profile import breakdown  # noqa: E402
from tests.support.bench.report import machine, report, targets  # noqa: E402
from tests.support.bench.sections import (  # noqa: E402
    bench_limit,
    bench_naive,
    bench_scaling,
    bench_service,
)
from tests.support.scenario import generate_load  # noqa: E402


def profiled(sizes: Sizes, mode: str) -> dict[str, Any]:
    """An e2e run under py-spy; per process: CPU per 1,000 commands, split by stage."""
    for old in (ROOT / "var").glob("profile-*.txt"):
        old.unlink()
    r = bench_e2e(sizes, mode, profile="profile")
    for phase in ("drain", "paced", "light"):
        cpu = r[phase]["cpu_s_per_1000"]
        stages = {}
        infix = "" if phase == "drain" else f"{phase}-"
        for f in sorted((ROOT / "var").glob(f"profile-{infix}[0-9]*.txt")):
            name = f.stem.removeprefix("profile-").removeprefix(infix)
            stages[name] = {k: v * cpu.get(name, 0.0) for k, v in breakdown(f).items()}
            console.print(
                f"  {phase} {name}: {cpu.get(name, 0.0):.3f} core-s per 1,000 commands: "
                + ", ".join(f"{k} {v:.3f}" for k, v in stages[name].items())
            )
        r[phase]["stages_core_s_per_1000"] = stages
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smaller run (about 2 minutes)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument(
        "--only",
        help="comma-separated sections to run (limit,naive,service,e2e,split,replicas,"
        "scaling,scale,keys); the targets table needs limit,naive,service,e2e,split,scaling",
    )
    p.add_argument(
        "--profile",
        choices=("run", "split"),
        help="profile that e2e mode with py-spy (one drain, paced and light run; nothing else)",
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

    if args.profile:
        only = {"profile"}
        mode = args.profile
        section("profile", lambda: profiled(sizes, mode))
    section("limit", lambda: bench_limit(sizes))
    section("naive", lambda: bench_naive(sizes))
    if only is None or only & {"service", "scale"}:
        scenario = generate_load("svc", sizes.service_batches, 25, seed=5)
        commands = commands_of(scenario)
        section("service", lambda: bench_service(sizes, commands))
    section("e2e", lambda: bench_e2e(sizes, "run"))
    section("split", lambda: bench_e2e(sizes, "split", workers=2))
    section("replicas", lambda: bench_e2e(sizes, "replicas", workers=2))
    section("scaling", lambda: bench_scaling(sizes))
    section(
        "scale",
        lambda: {
            "service": bench_service(sizes, commands, (1, 2, 4)),
            "e2e_split_6_partitions": bench_scale_e2e(sizes),
        },
    )
    section("keys", lambda: bench_keys(sizes))
    r["seconds"] = time.monotonic() - t0
    if only is None or {"limit", "naive", "service", "e2e", "split", "scaling"} <= only:
        r["targets"] = targets(r)
        report(r)
    if args.json:
        args.json.write_text(json.dumps(r, indent=2, default=str))
        console.print(f"results written to {args.json}")
    console.print(f"total {r['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
