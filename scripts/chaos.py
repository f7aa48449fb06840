"""The fault run: real processes, seeded faults, then a history checker.

Starts its own Kafka-protocol broker (Tansu, memory only) on a free loopback
port, several ``batchctl worker`` processes, one ``batchctl projector`` and one
``batchctl outbox``, each with this run's own PostgreSQL schema, Redis key
prefix, topic names and consumer group. Feeds a shuffled, duplicated scenario
(``tests/support/scenario.py``) while a seeded schedule injects faults:

- ``kill_worker`` / ``kill_projector`` / ``kill_outbox``: SIGKILL, restart after a pause;
- ``stop_worker``: SIGSTOP past the consumer session timeout, then SIGCONT;
- ``restart_postgres``: ``pg_ctlcluster ... restart`` (the machine's server);
- ``flush_redis``: delete every key of this run's prefix (the projector must notice);
- ``restart_redis``: restart the machine's Redis (memory only: it comes back empty);
- ``partition_<postgres|redis|kafka>_<reset|stranded>`` (only with ``--kinds``):
  the fleet reaches that dependency through a partition proxy
  (``tests/support/proxy.py``); nothing flows for 3-6 s, then the held
  connections are reset, or left open and silent forever (stranded) while new
  ones pass. Short client timeouts are set for the fleet.
- ``restart_broker``: only after all input was consumed and the outbox caught
  up (Tansu loses every topic, message and offset on restart); then the topics
  are re-created, the outbox must NOT republish, and a tail of new batches
  must flow end to end;
- ``compressed_producers``: a burst of extra batches produced by librdkafka
  (confluent-kafka), a quarter with each codec: gzip, snappy, lz4, zstd;
- ``read_only_window``: the run's OWN database (this kind makes the run create
  a database of its own, ``chaos_<tag>``, dropped afterwards) is switched to
  ``default_transaction_read_only`` and its sessions ended for a few seconds,
  as after a failover to a standby; nothing valid may be dead-lettered;
- ``concurrent_start``: every process of the fleet killed and all started
  again at the same instant (and, with this kind selected, the fleet also
  starts at once on an empty schema, before anything else creates it).

``--kinds`` selects the fault kinds (default: all); the restart kinds
(``restart_postgres``, ``restart_redis``) restart the machine's servers.

After each fault is repaired, a probe batch (one slot, one content) is sent;
the time until its completion is stored, projected to Redis and published on
the events topic is that fault's recovery time.

The checker then reads the event store, the DLQ and the events topic and
reports (a table, and JSON with ``--json-out``): messages sent / recorded /
no-op / dead-lettered; lost writes; duplicate effects; version gaps; read-model
divergence (``batchctl verify``); duplicate publications (allowed); recovery
times per fault kind. Exit 1 on any violation, 2 on a setup problem.

The code lives in ``tests/support/chaos/`` (processes, faults, readers, and the
history checker, unit-tested in tests/unit/test_chaos_checker.py); this file
parses the options, runs it and prints the report.

    python scripts/chaos.py --seed 7 --batches 300 --faults 24
    python scripts/chaos.py --quick
    python scripts/chaos.py --quick --no-broker-restart --faults 6 \\
        --kinds partition_postgres_stranded,partition_redis_stranded,partition_kafka_stranded
    python scripts/chaos.py --quick --no-broker-restart \\
        --kinds compressed_producers,read_only_window,concurrent_start
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # tests.support is not an installed package
    sys.path.insert(0, str(ROOT))

from rich.table import Table  # noqa: E402

from tests.support.chaos.checker import FaultRecord, Report  # noqa: E402
from tests.support.chaos.common import console  # noqa: E402
from tests.support.chaos.faults import FAULT_KINDS, PARTITION_KINDS  # noqa: E402
from tests.support.chaos.run import ChaosRun, Options  # noqa: E402


def render(report: Report) -> None:
    table = Table(
        title=f"Fault run: seed {report.seed}, {report.batches} batches, {report.seconds:.0f} s"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("ok")
    rows: list[tuple[str, Any, bool | None]] = [
        ("messages sent (incl. duplicates)", report.messages_sent, None),
        ("distinct messages", report.distinct_messages, None),
        ("valid deliveries", report.valid_deliveries, None),
        ("  recorded (distinct, events stored)", report.recorded, None),
        ("  no-op (duplicate deliveries)", report.noop, None),
        ("invalid sent", report.invalid_sent, None),
        ("dead-lettered (distinct source offsets)", report.dead_lettered, None),
        ("dead letters repeated after a crash (allowed)", report.dead_letter_duplicates, None),
        ("stored events", report.stored_events, None),
        ("records on the events topic", report.published_records, None),
        ("duplicate publications (allowed)", report.duplicate_publications, None),
        ("batches timed out by fault delays (allowed)", len(report.timed_out_by_delay), None),
        ("process exits not caused by the run", len(report.unexpected_exits), None),
    ]
    rows += [(name, n, n == 0) for name, n in report.violations().items()]
    for name, value, ok in rows:
        mark = "" if ok is None else ("[green]yes[/]" if ok else "[red]NO[/]")
        table.add_row(name, str(value), mark)
    console.print(table)
    faults = Table(title="Faults and recovery (repair -> probe batch stored, projected, published)")
    for col in ("kind", "injected", "max recovery s", "mean recovery s", "repair s"):
        faults.add_column(col, justify="right" if col != "kind" else "left")
    by_kind: dict[str, list[FaultRecord]] = defaultdict(list)
    for f in report.faults:
        by_kind[f.kind].append(f)
    for kind, records in sorted(by_kind.items()):
        rec = [f.recovery_seconds for f in records if f.recovery_seconds is not None]
        missing = len(records) - len(rec)
        faults.add_row(
            kind,
            str(len(records)),
            f"{max(rec):.1f}" if rec else "—",
            f"{sum(rec) / len(rec):.1f}" + (f" ({missing} never)" if missing else "")
            if rec
            else "never",
            f"{max(f.repaired_after for f in records):.1f}",
        )
    console.print(faults)
    if report.republished_per_outbox_restart:
        console.print(
            "outbox restarts (kill -9): events republished per restart "
            f"{report.republished_per_outbox_restart}"
        )
    if report.broker_restart_note:
        console.print(f"broker restart: {report.broker_restart_note}")
    for title, items in (
        ("lost writes", report.lost_writes),
        ("lost publications", report.lost_publications),
        ("duplicate effects", report.duplicate_effects),
        ("version gaps", report.version_gaps),
        ("dead-letter errors", report.wrongly_dead_lettered),
        ("outcome mismatches", report.outcome_mismatches),
        ("never closed", report.unclosed_batches),
        ("premature timeouts", report.premature_timeouts),
        ("out-of-order publications", report.out_of_order_publications),
        ("unexpected process exits", report.unexpected_exits),
    ):
        for item in items[:10]:
            console.print(f"[red]{title}:[/] {item}", markup=True, highlight=False)


def as_json(report: Report) -> dict[str, Any]:
    document = asdict(report)
    document["violations"] = report.violations()
    document["ok"] = not any(report.violations().values())
    return document


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--batches", type=int, default=None, help="batches (default 300; quick 40)")
    p.add_argument("--faults", type=int, default=None, help="faults (default 24; quick 6)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default 3)")
    p.add_argument("--quick", action="store_true", help="CI size: ~40 batches, 6 faults, < 3 min")
    p.add_argument("--no-broker-restart", action="store_true")
    p.add_argument("--time-limit", type=float, default=None, help="seconds (default 900)")
    p.add_argument("--json-out", help="also write the report as JSON to this file")
    p.add_argument("--keep", action="store_true", help="keep the schema and Redis keys")
    p.add_argument(
        "--standbys",
        action="store_true",
        help="a second projector and outbox standing by (follower leases); "
        "kill_projector / kill_outbox kill the current leader",
    )
    p.add_argument(
        "--kinds",
        help="comma-separated fault kinds to draw from (default: "
        + ",".join(FAULT_KINDS)
        + "); also: "
        + ",".join(PARTITION_KINDS),
    )
    a = p.parse_args(argv)
    base = Options.quick(a.seed) if a.quick else Options(seed=a.seed)
    changes: dict[str, Any] = {
        "json_out": a.json_out,
        "keep": a.keep,
        "broker_restart": not a.no_broker_restart,
    }
    if a.kinds:
        kinds = tuple(k.strip() for k in a.kinds.split(",") if k.strip())
        unknown = [k for k in kinds if k not in (*FAULT_KINDS, *PARTITION_KINDS)]
        if unknown or not kinds:
            p.error(f"unknown fault kinds: {', '.join(unknown) or '(none)'}")
        changes["kinds"] = kinds
    if a.standbys:
        changes["standbys"] = True
    for name in ("batches", "faults", "workers", "time_limit"):
        if getattr(a, name) is not None:
            changes[name] = getattr(a, name)
    if "faults" in changes and not a.quick:
        changes["feed_seconds"] = max(base.feed_seconds, 4.0 * changes["faults"])
    options = Options(**{**asdict(base), **changes})
    if options.faults < 1 or options.batches < 1 or options.workers < 1:
        p.error("--faults, --batches and --workers must be at least 1")
    return options


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if shutil.which("pg_ctlcluster") is None or shutil.which("redis-server") is None:
        console.print("[red]needs pg_ctlcluster and redis-server on this machine[/]")
        return 2
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C: the processes started here are
    # stopped, the broker ends, PostgreSQL and Redis are left running.
    signal.signal(signal.SIGTERM, _interrupt)
    report = asyncio.run(ChaosRun(options).run())
    render(report)
    document = as_json(report)
    if options.json_out:
        Path(options.json_out).write_text(json.dumps(document, indent=2, default=str))
    console.print("[green]no violations[/]" if document["ok"] else "[red]VIOLATIONS FOUND[/]")
    return 0 if document["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
