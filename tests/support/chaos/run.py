"""The fault run: real processes, seeded faults, then the history checker.

See scripts/chaos.py (the runner) for what it does and how to start it. Each
part lives in its own module: ``fleet`` (the processes), ``faults`` (the fault
kinds), ``broker`` and ``store`` (feeding and reading back), ``checker`` (the
oracle, unit-tested).
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
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
from psycopg import sql

from application.service import BatchService
from domain import Batch
from infrastructure.bootstrap import Bootstrap
from infrastructure.kafka.clients import ensure_topics
from infrastructure.kafka.local_broker import LocalBroker
from infrastructure.postgres.store import conninfo, ensure_database
from infrastructure.redis.keys import summary_key
from infrastructure.settings import Settings, load_settings
from projections.envelope import event_id_of
from tests.support.chaos.broker import EventsTap, produce, read_dlq
from tests.support.chaos.checker import NO_BROKER_RESTART, FaultRecord, History, Report, check
from tests.support.chaos.common import ROOT, console
from tests.support.chaos.faults import (
    CODECS,
    FAULT_KINDS,
    PARTITION_KINDS,
    PARTITION_TIMEOUTS,
    SESSION_TIMEOUT_S,
    admin_connect,
    ensure_servers_running,
    flush_prefix,
    produce_compressed,
    restart_postgres,
    restart_redis,
    set_read_only,
)
from tests.support.chaos.fleet import Fleet
from tests.support.chaos.store import (
    lease_holder_pid,
    outbox_position,
    positions,
    read_store,
)
from tests.support.scenario import Message, Scenario, content, generate, registration
from tests.support.scratch import drop_scratch, scratch_env, topic_env


@dataclass(frozen=True)
class Options:
    seed: int = 7
    batches: int = 300
    faults: int = 24
    workers: int = 3
    feed_seconds: float = 90.0
    batch_timeout_seconds: int = 60
    tail_batches: int = 10
    broker_restart: bool = True
    time_limit: float = 900.0
    json_out: str | None = None
    keep: bool = False
    kinds: tuple[str, ...] = FAULT_KINDS
    # A second projector and outbox standing by: kill_projector / kill_outbox kill
    # whichever holds the follower's lease (the other takes over).
    standbys: bool = False

    @classmethod
    def quick(cls, seed: int = 7) -> Options:
        return cls(
            seed=seed,
            batches=40,
            faults=8,
            workers=2,
            feed_seconds=25.0,
            batch_timeout_seconds=40,
            tail_batches=3,
            time_limit=170.0,
        )


class ChaosRun:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.rng = random.Random(options.seed)
        self.tag = f"c{options.seed}x{uuid.uuid4().hex[:6]}"
        self.t0 = time.monotonic()
        self.deadline = self.t0 + options.time_limit
        self.report = Report(seed=options.seed, batches=options.batches)
        self.sent: list[Message] = []
        self.probe_n = 0
        self.probe_expected: dict[str, int] = {}
        self.broker = LocalBroker()
        self.log_dir = ROOT / "var" / "chaos" / self.tag
        self.env: dict[str, str] = {}
        self.settings: Settings | None = None
        self.tail: Scenario | None = None
        self.head_at_broker_restart = NO_BROKER_RESTART  # no restart: every event is "before"
        self.tap_base = NO_BROKER_RESTART
        self.proxies: dict[str, Any] = {}  # dependency -> ProxyThread (partition kinds only)
        self.extra: list[Scenario] = []  # batches sent by faults (compressed producers)
        self.own_database = "read_only_window" in options.kinds

    # -------------------------------------------------------------- set-up

    def configure(self) -> Settings:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("TOPIC_", "KAFKA_"))}
        self.env = {
            **base,
            **scratch_env(
                os.environ.get(
                    "CHAOS_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/batchslot_chaos"
                ),
                os.environ.get("CHAOS_REDIS_URL", "redis://127.0.0.1:6379/0"),
                schema=f"chaos_{self.tag}".lower(),
                key_prefix=f"chaos:{self.tag}:",
            ),
            "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap_servers,
            **topic_env(self.tag),
            "KAFKA_CONSUMER_GROUP": f"chaos-{self.tag}",
            "BATCH_TIMEOUT_SECONDS": str(self.o.batch_timeout_seconds),
            "SWEEP_INTERVAL_SECONDS": "1",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
        if self.own_database:  # a read-only window needs a database of the run's own
            url = self.env["DATABASE_URL"]
            self.env["DATABASE_URL"] = url.rsplit("/", 1)[0] + f"/chaos_{self.tag}".lower()
            self.env["DATABASE_SCHEMA"] = "public"
        self.settings = load_settings(self.env)
        if any(k in PARTITION_KINDS for k in self.o.kinds):
            self._through_proxies()
        return self.settings

    def _through_proxies(self) -> None:
        """The fleet reaches every dependency through a partition proxy; the run's own
        checks go direct (except Kafka: the broker advertises its proxy to everyone)."""
        from urllib.parse import urlsplit, urlunsplit

        from tests.support.proxy import ProxyThread

        def via(url: str, default_port: int, name: str) -> str:
            parts = urlsplit(url)
            proxy = ProxyThread(parts.hostname or "127.0.0.1", parts.port or default_port).start()
            self.proxies[name] = proxy
            netloc = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
            return urlunsplit(parts._replace(netloc=f"{netloc}127.0.0.1:{proxy.port}"))

        self.env["DATABASE_URL"] = via(self.env["DATABASE_URL"], 5432, "postgres")
        self.env["REDIS_URL"] = via(self.env["REDIS_URL"], 6379, "redis")
        kafka = ProxyThread(self.broker.host, self.broker.port).start()
        self.proxies["kafka"] = kafka
        self.broker.advertised = kafka.address
        self.env["KAFKA_BOOTSTRAP_SERVERS"] = kafka.address
        self.env.update(PARTITION_TIMEOUTS)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def schedule(self) -> list[tuple[float, str]]:
        """Seeded (offset seconds, fault kind) for the feed phase; the broker restart is last."""
        kinds = list(self.o.kinds)
        n = self.o.faults - (1 if self.o.broker_restart else 0)
        # Every kind at least once (when there is room), the rest drawn at random.
        chosen = kinds[:n] + [self.rng.choice(kinds) for _ in range(max(0, n - len(kinds)))]
        self.rng.shuffle(chosen)
        return [(self.o.feed_seconds * (i + 0.5) / max(1, n), k) for i, k in enumerate(chosen)]

    # -------------------------------------------------------------- faults

    def inject(self, fleet: Fleet, kind: str) -> FaultRecord:
        s = self.settings
        assert s is not None
        workers = sorted(n for n in fleet.roles if n.startswith("worker"))
        target = {
            "kill_projector": "projector",
            "kill_outbox": "outbox",
            "compressed_producers": "producers",
            "concurrent_start": "fleet",
            "read_only_window": "database",
        }.get(kind, self.rng.choice(workers) if "worker" in kind else "server")
        if kind in PARTITION_KINDS:
            target = kind.split("_")[1]
        leader_note = ""
        if self.o.standbys and kind in ("kill_projector", "kill_outbox"):
            try:  # kill the one that leads (holds the follower's lease)
                pid = lease_holder_pid(s, target)
                leader = fleet.named(pid)
                leader_note = f"leader {leader}" if leader else f"leader unknown (pid {pid})"
                target = leader or target
            except psycopg.Error as e:
                leader_note = f"leader unknown ({type(e).__name__})"
        record = FaultRecord(kind, target, round(self.elapsed(), 1), note=leader_note)
        console.print(f"[yellow]{record.at:6.1f}s fault[/] {kind} {target}")
        start = time.monotonic()
        if kind.startswith("kill_"):
            fleet.signal(target, signal.SIGKILL)
            time.sleep(self.rng.uniform(0.5, 3.0))
            if kind == "kill_outbox":
                try:
                    record.outbox_position = outbox_position(s)
                except psycopg.Error as e:  # a busy shared server: report it, carry on
                    record.note = f"outbox position unknown ({type(e).__name__})"
            fleet.start(target)
        elif kind == "stop_worker":
            fleet.signal(target, signal.SIGSTOP)
            time.sleep(SESSION_TIMEOUT_S + self.rng.uniform(2.0, 5.0))
            fleet.signal(target, signal.SIGCONT)
        elif kind == "restart_postgres":
            restart_postgres(s)
        elif kind == "flush_redis":
            record.note = f"{flush_prefix(s)} keys deleted"
        elif kind == "restart_redis":
            restart_redis()
        elif kind in PARTITION_KINDS:
            _, dependency, heal = kind.split("_")
            proxy = self.proxies[dependency]
            proxy.partition()
            time.sleep(self.rng.uniform(3.0, 6.0))
            held = proxy.heal(reset=heal == "reset")
            record.note = f"{held} connections {'reset' if heal == 'reset' else 'stranded'}"
        elif kind == "compressed_producers":
            burst = generate(
                f"{self.tag}-z{len(self.extra)}",
                batches=8,
                seed=self.o.seed + 100 + len(self.extra),
                timeout_batches=0,
                excess_batches=1,
                invalid_messages=1,
            )
            self.extra.append(burst)
            self.sent += burst.messages
            produce_compressed(s, burst.messages)
            record.note = f"{len(burst.messages)} messages, {len(CODECS)} codecs"
        elif kind == "read_only_window":
            ended = set_read_only(s, True)
            time.sleep(self.rng.uniform(4.0, 8.0))
            ended += set_read_only(s, False)
            record.note = f"{ended} sessions ended"
        elif kind == "concurrent_start":
            fleet.restart_all_at_once()
            record.note = f"{len(fleet.roles)} processes"
        record.repaired_after = round(time.monotonic() - start, 2)
        return record

    def probe_messages(self) -> tuple[str, list[Message]]:
        self.probe_n += 1
        b = f"{self.tag}-probe{self.probe_n:03d}"
        self.probe_expected[b] = 1
        return b, [registration(b, [f"{b}-e0"]), content(b, f"{b}-t0", f"{b}-f0")]

    async def probe(self, service: BatchService, tap: EventsTap) -> float | None:
        """Send a one-slot batch; seconds until it is stored, projected and published."""
        s = self.settings
        assert s is not None
        batch_id, messages = self.probe_messages()
        start = time.monotonic()
        await produce(s, messages, 0)
        self.sent += messages
        view = redis.Redis.from_url(s.redis_url.get_secret_value(), socket_timeout=3)
        summary = summary_key(s.redis_key_prefix, batch_id)
        stream = Batch.create_id(batch_id)
        try:
            while time.monotonic() - start < 120 and time.monotonic() < self.deadline:
                try:
                    model = await asyncio.to_thread(view.hgetall, summary)
                except redis.RedisError:
                    model = {}
                done = model.get(b"status") == b"completed" and (
                    str(event_id_of(stream, int(model[b"version"]))) in tap.ids
                )
                if done:
                    return round(time.monotonic() - start, 2)
                await asyncio.sleep(0.1)
            return None
        finally:
            view.close()

    # -------------------------------------------------------------- phases

    async def feed_with_faults(
        self, fleet: Fleet, scenario: Scenario, service: BatchService, tap: EventsTap
    ) -> None:
        s = self.settings
        assert s is not None
        feeder = asyncio.create_task(produce(s, scenario.messages, self.o.feed_seconds))
        self.sent += scenario.messages
        feed_start = self.elapsed()
        for offset, kind in self.schedule():
            while self.elapsed() - feed_start < offset and time.monotonic() < self.deadline:
                fleet.supervise()
                await asyncio.sleep(0.2)
            if time.monotonic() > self.deadline:
                console.print("[red]time limit reached; skipping the remaining faults[/]")
                break
            record = await asyncio.to_thread(self.inject, fleet, kind)
            record.recovery_seconds = await self.probe(service, tap)
            self.report.faults.append(record)
            fleet.supervise()
        await feeder

    async def quiesce(self, fleet: Fleet, service: BatchService, expected: set[str]) -> None:
        """Wait until every batch is closed and the outbox and projector are at the head."""
        s = self.settings
        assert s is not None
        stable, last = 0, (-1, -1, -1)
        while time.monotonic() < self.deadline:
            fleet.supervise()
            try:
                closed = await asyncio.to_thread(self._closed, service, expected)
                pos = await asyncio.to_thread(positions, s, service)
            except Exception as e:  # a server still coming back
                console.print(f"[dim]quiesce: {type(e).__name__}[/]")
                await asyncio.sleep(1)
                continue
            caught_up = closed and pos[0] == pos[1] == pos[2]
            stable = stable + 1 if caught_up and pos == last else 0
            last = pos
            if stable >= 3:
                return
            await asyncio.sleep(1)
        console.print(f"[red]quiesce: time limit reached[/] (store, outbox, projector at {last})")

    @staticmethod
    def _closed(service: BatchService, expected: set[str]) -> bool:
        for b in expected:
            batch = service.get_batch(b)
            if batch is None or batch.status not in ("completed", "timed_out", "expired"):
                return False
        return True

    async def broker_restart(self, service: BatchService, tap: EventsTap) -> Scenario:
        """Restart the memory broker once everything is consumed and published."""
        s = self.settings
        assert s is not None
        record = FaultRecord("restart_broker", "broker", round(self.elapsed(), 1))
        console.print(f"[yellow]{record.at:6.1f}s fault[/] restart_broker (memory: loses all)")
        head_before = (await asyncio.to_thread(positions, s, service))[0]
        published_before = len(tap.records)
        start = time.monotonic()
        await asyncio.to_thread(self.broker.restart)
        await ensure_topics(s)
        record.repaired_after = round(time.monotonic() - start, 2)
        await tap.reopen()
        # The outbox's position lives in PostgreSQL: nothing may be republished.
        self.tap_base = len(tap.records)
        await asyncio.sleep(8)
        republished = len(tap.records) - self.tap_base  # nothing new was stored meanwhile
        record.recovery_seconds = await self.probe(service, tap)
        self.report.faults.append(record)
        # A tail of new batches must flow end to end after the restart.
        tail = generate(
            f"{self.tag}-tail",
            batches=self.o.tail_batches,
            seed=self.o.seed + 1,
            timeout_batches=0,
            excess_batches=1,
            invalid_messages=1,
        )
        await produce(s, tail.messages, 3)
        self.sent += tail.messages
        self.report.broker_restart_note = (
            f"{published_before} records on the events topic and every consumer-group offset "
            f"were lost with the broker; store head was {head_before}; "
            f"{republished} records published in the 8 s after the restart"
        )
        self.head_at_broker_restart = head_before
        return tail

    def verify(self) -> int:
        result = subprocess.run(
            [sys.executable, "-m", "infrastructure.cli.main", "verify", "--json"],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        try:
            document = json.loads(result.stdout)
        except json.JSONDecodeError:
            console.print(f"[red]verify failed:[/] {result.stderr.strip()[-500:]}")
            return -1
        return int(document["batches_differing"]) + int(document["read_model_only"])

    # -------------------------------------------------------------- main

    async def run(self) -> Report:
        s = self.configure()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.broker.log_path = self.log_dir / "broker.log"
        self.broker.start()
        await ensure_topics(s)
        fleet = Fleet(self.env, self.o.workers, self.log_dir, self.t0, self.o.standbys)
        if "concurrent_start" in self.o.kinds:
            fleet.start_all()  # every process at once on an empty store, the checker too
        ensure_database(s)
        service = Bootstrap(s).batch_service()
        tap = EventsTap(s)
        scenario = generate(
            self.tag,
            batches=self.o.batches,
            seed=self.o.seed,
            timeout_batches=2,
            excess_batches=max(1, self.o.batches // 10),
            invalid_messages=5,
        )
        scenarios = [scenario]
        console.print(
            f"run {self.tag}: seed {self.o.seed}, {len(scenario.expected)} batches, "
            f"{len(scenario.messages)} messages, {self.o.faults} faults, "
            f"{self.o.workers} workers; logs in {self.log_dir.relative_to(ROOT)}"
        )
        try:
            if not fleet.procs:
                fleet.start_all()
            await tap.start()
            await asyncio.sleep(6)  # let the consumer group form
            await self.feed_with_faults(fleet, scenario, service, tap)
            scenarios += self.extra
            expected = {b for sc in scenarios for b in sc.expected} | set(self.probe_expected)
            await self.quiesce(fleet, service, expected)
            await asyncio.sleep(2)
            dlq = [("before", x) for x in await read_dlq(s)]  # the broker restart loses it
            if self.o.broker_restart and time.monotonic() < self.deadline:
                tail = await self.broker_restart(service, tap)
                scenarios.append(tail)
                await self.quiesce(fleet, service, set(tail.expected) | set(self.probe_expected))
                await asyncio.sleep(2)
                dlq += [("after", x) for x in await read_dlq(s)]
            await tap.stop()
            self.report.unexpected_exits = fleet.unexpected
            self.report.divergence = await asyncio.to_thread(self.verify)
            history = History(
                sent=self.sent,
                stored=await asyncio.to_thread(read_store, service),
                published=tap.records,
                dead_letters=dlq,
                scenarios=scenarios,
                batch_timeout_seconds=self.o.batch_timeout_seconds,
                probes=list(self.probe_expected),
                head_at_broker_restart=self.head_at_broker_restart,
                tap_base=self.tap_base,
            )
            check(history, self.report)
        finally:
            fleet.stop_all()
            service.close()
            self.broker.stop()
            for proxy in self.proxies.values():
                proxy.stop()
            ensure_servers_running(s)
            if not self.o.keep:
                cleanup(s, drop_database=self.own_database)
        self.report.seconds = round(self.elapsed(), 1)
        return self.report


def cleanup(settings: Settings, drop_database: bool = False) -> None:
    if drop_database:  # the run's own database (read_only_window)
        dbname = conninfo(settings)["dbname"]
        assert dbname.startswith("chaos_"), dbname
        with admin_connect(settings) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )
        flush_prefix(settings)
        return
    drop_scratch(settings)
