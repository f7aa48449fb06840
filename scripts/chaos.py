"""The fault run (issue #8): real processes, seeded faults, then a history checker.

Starts its own Kafka-protocol broker (Tansu, memory only) on a free loopback
port, several ``batchctl worker`` processes, one ``batchctl projector`` and one
``batchctl outbox``, each with this run's own PostgreSQL schema, Redis key
prefix, topic names and consumer group. Feeds a shuffled, duplicated scenario
(``tests.support.scenario.generate``) while a seeded schedule injects faults:

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
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import redis  # noqa: E402
from aiokafka.errors import KafkaError  # noqa: E402
from psycopg import sql  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from application.messages import InvalidMessage, parse_message  # noqa: E402
from application.service import BatchService  # noqa: E402
from domain import Batch  # noqa: E402
from infrastructure.bootstrap import Bootstrap  # noqa: E402
from infrastructure.kafka import ensure_topics, make_consumer, make_producer  # noqa: E402
from infrastructure.local_broker import LocalBroker  # noqa: E402
from infrastructure.postgres import conninfo, ensure_database  # noqa: E402
from infrastructure.redis_view import RedisSlotView  # noqa: E402
from infrastructure.settings import Settings, load_settings  # noqa: E402
from projections.envelope import event_id_of  # noqa: E402
from tests.support.scenario import Message, Scenario, content, generate, registration  # noqa: E402

console = Console(width=None if sys.stdout.isatty() else 140)
SESSION_TIMEOUT_S = 10.0  # aiokafka's default session_timeout_ms
# In this order, so that a short run (--quick) still covers the servers.
FAULT_KINDS = (
    "kill_worker",
    "restart_postgres",
    "flush_redis",
    "stop_worker",
    "restart_redis",
    "kill_outbox",
    "kill_projector",
    "compressed_producers",
    "read_only_window",
    "concurrent_start",
)
PARTITION_KINDS = tuple(
    f"partition_{dependency}_{heal}"
    for dependency in ("postgres", "redis", "kafka")
    for heal in ("reset", "stranded")
)
# The fleet's bounds when a partition kind is in the run (seconds, not minutes).
PARTITION_TIMEOUTS = {
    "DATABASE_STATEMENT_TIMEOUT_SECONDS": "5",
    "DATABASE_CALL_TIMEOUT_SECONDS": "6",
    "REDIS_SOCKET_TIMEOUT_SECONDS": "3",
    "KAFKA_REQUEST_TIMEOUT_MS": "6000",
    "KAFKA_METADATA_MAX_AGE_MS": "10000",
    "STALL_TIMEOUT_SECONDS": "10",
}
CODECS = ("gzip", "snappy", "lz4", "zstd")
# fmt: off
REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
    "--logfile", "/var/log/redis/ci.log",
]
# fmt: on


# ---------------------------------------------------------------- configuration


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


@dataclass
class FaultRecord:
    kind: str
    target: str
    at: float  # seconds since the start of the run
    repaired_after: float = 0.0  # seconds from injection to repair
    recovery_seconds: float | None = None  # repair -> probe batch end to end
    note: str = ""
    outbox_position: int | None = None  # kill_outbox: the position the restart resumes from
    republished: int | None = None  # kill_outbox: events the restart published again


@dataclass
class Report:
    seed: int
    batches: int
    messages_sent: int = 0
    distinct_messages: int = 0
    invalid_sent: int = 0
    valid_deliveries: int = 0
    recorded: int = 0
    noop: int = 0
    dead_lettered: int = 0
    dead_letter_duplicates: int = 0
    stored_events: int = 0
    published_records: int = 0
    duplicate_publications: int = 0
    lost_writes: list[str] = field(default_factory=list)
    lost_publications: list[str] = field(default_factory=list)
    republished_after_broker_restart: int = 0
    duplicate_effects: list[str] = field(default_factory=list)
    version_gaps: list[str] = field(default_factory=list)
    out_of_order_publications: list[str] = field(default_factory=list)
    wrongly_dead_lettered: list[str] = field(default_factory=list)
    outcome_mismatches: list[str] = field(default_factory=list)
    unclosed_batches: list[str] = field(default_factory=list)
    timed_out_by_delay: list[str] = field(default_factory=list)
    premature_timeouts: list[str] = field(default_factory=list)
    divergence: int = -1
    unexpected_exits: list[str] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    republished_per_outbox_restart: list[int] = field(default_factory=list)
    broker_restart_note: str = ""
    seconds: float = 0.0

    def violations(self) -> dict[str, int]:
        return {
            "lost writes": len(self.lost_writes),
            "stored events missing from the events topic": len(self.lost_publications),
            "republished after broker restart": self.republished_after_broker_restart,
            "duplicate effects": len(self.duplicate_effects),
            "version gaps": len(self.version_gaps),
            "out-of-order publications": len(self.out_of_order_publications),
            "valid messages dead-lettered / invalid not": len(self.wrongly_dead_lettered),
            "outcome mismatches": len(self.outcome_mismatches),
            "batches never closed": len(self.unclosed_batches),
            "timeouts before the deadline": len(self.premature_timeouts),
            "read-model divergence": self.divergence if self.divergence >= 0 else 1,
        }


# ---------------------------------------------------------------- processes


class Fleet:
    """The service's processes, each restartable, their logs under ``log_dir``."""

    def __init__(self, env: dict[str, str], workers: int, log_dir: Path, t0: float) -> None:
        self.env, self.log_dir, self.t0 = env, log_dir, t0
        self.roles = {f"worker-{i}": "worker" for i in range(workers)}
        self.roles.update({"projector": "projector", "outbox": "outbox"})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.expected_dead: set[str] = set()
        self.unexpected: list[str] = []

    def start(self, name: str) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "infrastructure.cli.main", self.roles[name]],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.expected_dead.discard(name)

    def start_all(self) -> None:
        for name in self.roles:
            self.start(name)

    def restart_all_at_once(self) -> None:
        """SIGKILL every process, then start them all at the same instant."""
        for name in self.roles:
            if self.procs[name].poll() is None:
                self.signal(name, signal.SIGKILL)
        self.start_all()

    def signal(self, name: str, sig: signal.Signals) -> None:
        if sig == signal.SIGKILL:
            self.expected_dead.add(name)
        self.procs[name].send_signal(sig)
        if sig == signal.SIGKILL:
            self.procs[name].wait(timeout=10)

    def supervise(self) -> None:
        """Restart a process that exited on its own (as systemd would), and note it."""
        for name, proc in self.procs.items():
            if proc.poll() is not None and name not in self.expected_dead:
                tail = _tail(self.log_dir / f"{name}.log")
                at = time.monotonic() - self.t0
                self.unexpected.append(f"{name} exited {proc.returncode} at {at:.0f}s: {tail}")
                self.start(name)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "?"
    errors = [ln for ln in lines if ln.startswith(("error:", "Traceback")) or '"ERROR"' in ln]
    return (errors or lines or ["(no output)"])[-1][:300]


# ---------------------------------------------------------------- servers


def wait_for(check: Any, timeout: float, what: str) -> float:
    """Poll ``check()`` until true (bounded); return the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if check():
                return time.monotonic() - start
        except Exception:  # the server is coming back
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} not back within {timeout:.0f}s")


def postgres_up(settings: Settings) -> bool:
    with psycopg.connect(**conninfo(settings), connect_timeout=2) as conn:
        return conn.execute("SELECT 1").fetchone() is not None


def pg_ctlcluster(action: str, check: bool) -> None:
    """Start or restart the machine's PostgreSQL cluster."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=check,
        capture_output=True,
        timeout=120,
    )


def restart_postgres(settings: Settings) -> None:
    pg_ctlcluster("restart", check=True)
    wait_for(lambda: postgres_up(settings), 90, "PostgreSQL")


def redis_up() -> bool:
    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def restart_redis() -> None:
    """Restart the machine's Redis (it keeps nothing on disk: it comes back empty)."""
    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
    try:
        client.shutdown(nosave=True)
    except (redis.ConnectionError, redis.ResponseError):
        pass  # shutdown closes the connection under us
    finally:
        client.close()
    wait_for(lambda: not redis_up(), 20, "Redis shutdown")
    subprocess.run(REDIS_START, check=True, capture_output=True, timeout=30)
    wait_for(redis_up, 30, "Redis")


def ensure_servers_running(settings: Settings) -> None:
    """Leave PostgreSQL and Redis running, whatever happened."""
    try:
        wait_for(redis_up, 5, "Redis")
    except TimeoutError:
        subprocess.run(REDIS_START, check=False, capture_output=True, timeout=30)
        wait_for(redis_up, 30, "Redis")
    try:
        wait_for(lambda: postgres_up(settings), 5, "PostgreSQL")
    except TimeoutError:
        pg_ctlcluster("start", check=False)
        wait_for(lambda: postgres_up(settings), 90, "PostgreSQL")


def flush_prefix(settings: Settings) -> int:
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        keys = list(client.scan_iter(match=f"{settings.redis_key_prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        return len(keys)
    finally:
        client.close()


def admin_connect(settings: Settings) -> psycopg.Connection[Any]:
    """A connection to the server's ``postgres`` database (to alter or drop the run's own)."""
    return psycopg.connect(
        **{**conninfo(settings), "dbname": "postgres"}, autocommit=True, connect_timeout=5
    )


def set_read_only(settings: Settings, on: bool) -> int:
    """Switch the run's OWN database to read-only (or back) and end its sessions."""
    dbname = conninfo(settings)["dbname"]
    assert dbname.startswith("chaos_"), f"refusing to alter {dbname!r}: not the run's own"
    with admin_connect(settings) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = {}").format(
                sql.Identifier(dbname), sql.SQL("on" if on else "off")
            )
        )
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchall()
    return len(rows)


def produce_compressed(settings: Settings, messages: list[Message]) -> int:
    """Send ``messages`` with librdkafka, a quarter with each codec; return how many."""
    from confluent_kafka import Producer  # dev extra: the fault run only

    topic = settings.topics.by_kind
    for i, codec in enumerate(CODECS):
        producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap_servers,
                "compression.type": codec,
                "enable.idempotence": False,  # Tansu has no idempotent producer
                "acks": "all",
                "linger.ms": 20,
            }
        )
        for m in messages[i :: len(CODECS)]:
            producer.produce(topic[m.kind], key=m.key.encode(), value=m.value)
        if producer.flush(60) != 0:
            raise RuntimeError(f"{codec} producer: messages not acknowledged")
    return len(messages)


# ---------------------------------------------------------------- Kafka side


class EventsTap:
    """Reads the events topic from the beginning in the background, remembering everything."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.records: list[tuple[str, str, int]] = []  # (event_id, batch key, arrival index)
        self.ids: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 30)

    async def reopen(self) -> None:
        """Read again from the beginning with a new consumer (after a broker restart).

        Needed: a consumer without a group keeps its in-memory offsets across the
        restart, and Tansu answers a fetch beyond the (new, empty) log with no
        records rather than OFFSET_OUT_OF_RANGE, so it would silently skip every
        new record below its old offset.
        """
        await self.stop()
        await self.start()

    async def _run(self) -> None:
        while not self._stop.is_set():
            consumer = make_consumer(
                self.settings,
                self.settings.topics.events,
                group_id=None,
                metadata_max_age_ms=2000,
                request_timeout_ms=10_000,
            )
            try:
                await consumer.start()
                while not self._stop.is_set():
                    batch = await consumer.getmany(timeout_ms=300)
                    for record in (r for rs in batch.values() for r in rs):
                        headers = dict(record.headers)
                        event_id = headers["event_id"].decode()
                        self.records.append((event_id, record.key.decode(), len(self.records)))
                        self.ids.add(event_id)
            except Exception as e:  # broker restart: reconnect
                console.print(f"[dim]events tap reconnecting ({type(e).__name__})[/]")
                await asyncio.sleep(1)
            finally:
                await consumer.stop()


async def produce(settings: Settings, messages: list[Message], seconds: float) -> int:
    """Send ``messages`` spread over ``seconds``; return how many were acknowledged."""
    topic = settings.topics.by_kind
    producer = make_producer(settings)
    await producer.start()

    async def send(chunk: list[Message]) -> None:
        """Send a chunk; resend what failed (a partition can time out the run's own
        requests too: the broker advertises the proxy to every client)."""
        for attempt in range(10):
            try:
                futures = [
                    await producer.send(topic[m.kind], value=m.value, key=m.key.encode())
                    for m in chunk
                ]
                results = await asyncio.gather(*futures, return_exceptions=True)
            except KafkaError:
                results = [KafkaError()] * len(chunk)
            chunk = [m for m, r in zip(chunk, results, strict=True) if isinstance(r, Exception)]
            if not chunk:
                return
            await asyncio.sleep(min(5.0, 0.5 * (attempt + 1)))
        raise RuntimeError(f"{len(chunk)} messages could not be sent")

    try:
        pause = seconds / max(1, len(messages))
        for i in range(0, len(messages), 20):
            await send(messages[i : i + 20])
            if i + 20 < len(messages):
                await asyncio.sleep(pause * 20)
    finally:
        await producer.stop()
    return len(messages)


async def read_dlq(settings: Settings, seconds: float = 4.0) -> list[Any]:
    consumer = make_consumer(settings, settings.topics.dlq, group_id=None)
    await consumer.start()
    out: list[Any] = []
    try:
        idle_until = time.monotonic() + seconds
        while time.monotonic() < idle_until:
            batch = await consumer.getmany(timeout_ms=300)
            for rs in batch.values():
                out.extend(rs)
                idle_until = time.monotonic() + 1.5
    finally:
        await consumer.stop()
    return out


# ---------------------------------------------------------------- the store


@dataclass
class StoredEvent:
    notification_id: int
    originator_id: uuid.UUID
    version: int
    type: str
    data: dict[str, Any]


def read_store(service: BatchService) -> list[StoredEvent]:
    out: list[StoredEvent] = []
    position = 0
    for _ in range(100_000):
        page = service.recorder.select_notifications(position, 1000, inclusive_of_start=False)
        if not page:
            break
        for n in page:
            e = service.mapper.to_domain_event(n)
            data = {k: v for k, v in vars(e).items() if not k.startswith("originator")}
            out.append(
                StoredEvent(
                    n.id,
                    uuid.UUID(str(n.originator_id)),
                    n.originator_version,
                    type(e).__name__,
                    data,
                )
            )
        position = page[-1].id
    return out


def outbox_position(settings: Settings) -> int:
    """The outbox's recorded position (where a restarted outbox resumes)."""
    with psycopg.connect(**conninfo(settings), connect_timeout=5) as conn:
        query = sql.SQL("SELECT coalesce(max(notification_id), 0) FROM {}.{}").format(
            sql.Identifier(settings.database_schema), sql.Identifier("outbox_tracking")
        )
        row = conn.execute(query).fetchone()
        return int(row[0]) if row else 0


def positions(settings: Settings, service: BatchService) -> tuple[int, int, int]:
    """(store head, outbox position, projector position)."""
    head = service.recorder.max_notification_id() or 0
    with psycopg.connect(**conninfo(settings), connect_timeout=5) as conn:
        query = sql.SQL("SELECT coalesce(max(notification_id), 0) FROM {}.{}").format(
            sql.Identifier(settings.database_schema), sql.Identifier("outbox_tracking")
        )
        try:
            row = conn.execute(query).fetchone()
            outbox = int(row[0]) if row else 0
        except psycopg.errors.UndefinedTable:
            outbox = 0
    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5)
    try:
        projected = RedisSlotView(client, settings.redis_key_prefix).position() or 0
    finally:
        client.close()
    return head, outbox, projected


# ---------------------------------------------------------------- the run


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
        self.head_at_broker_restart = 1 << 62  # no restart: every event is "before"
        self.tap_base = 1 << 62
        self.proxies: dict[str, Any] = {}  # dependency -> ProxyThread (partition kinds only)
        self.extra: list[Scenario] = []  # batches sent by faults (compressed producers)
        self.own_database = "read_only_window" in options.kinds

    # -------------------------------------------------------------- set-up

    def configure(self) -> Settings:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("TOPIC_", "KAFKA_"))}
        self.env = {
            **base,
            "DATABASE_URL": os.environ.get(
                "CHAOS_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/batchslot_chaos"
            ),
            "DATABASE_SCHEMA": f"chaos_{self.tag}".lower(),
            "REDIS_URL": os.environ.get("CHAOS_REDIS_URL", "redis://127.0.0.1:6379/0"),
            "REDIS_KEY_PREFIX": f"chaos:{self.tag}:",
            "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap_servers,
            "KAFKA_CONSUMER_GROUP": f"chaos-{self.tag}",
            "TOPIC_BATCH_REGISTERED": f"reg-{self.tag}",
            "TOPIC_CONTENT_PROVISIONED": f"prov-{self.tag}",
            "TOPIC_VALIDATION_FAILED": f"fail-{self.tag}",
            "TOPIC_BATCH_EVENTS": f"events-{self.tag}",
            "TOPIC_DLQ": f"dlq-{self.tag}",
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
        record = FaultRecord(kind, target, round(self.elapsed(), 1))
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
        summary = f"{s.redis_key_prefix}batch:{{{batch_id}}}:summary"
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

    # -------------------------------------------------------------- checker

    def check(
        self,
        service: BatchService,
        tap: EventsTap,
        dlq: list[tuple[str, Any]],
        scenarios: list[Scenario],
    ) -> None:
        r = self.report
        stored = read_store(service)
        r.stored_events = len(stored)
        by_batch: dict[str, list[StoredEvent]] = defaultdict(list)
        for e in stored:
            by_batch[str(e.data.get("batch_id"))].append(e)
        # Messages: distinct by bytes (a duplicate delivery repeats the same envelope).
        r.messages_sent = len(self.sent)
        distinct = {m.value: m for m in self.sent}
        r.distinct_messages = len(distinct)
        cids = {str(e.data.get("correlation_id")) for e in stored}
        valid: list[tuple[Message, Any]] = []
        invalid: set[bytes] = set()
        for m in distinct.values():
            try:
                valid.append((m, parse_message(m.kind, m.value)))
            except InvalidMessage:
                invalid.add(m.value)
        r.invalid_sent = sum(1 for m in self.sent if m.value in invalid)
        r.valid_deliveries = r.messages_sent - r.invalid_sent
        r.recorded = sum(1 for _, c in valid if c.correlation_id in cids)
        r.noop = r.valid_deliveries - r.recorded
        # Dead letters: each invalid message once (or more after a crash), no valid one.
        sources = Counter(
            (phase, *(dict(x.headers)[f"dlq.source.{h}"] for h in ("topic", "partition", "offset")))
            for phase, x in dlq
        )
        r.dead_lettered = len(sources)
        r.dead_letter_duplicates = sum(n - 1 for n in sources.values())
        dlq_values = {x.value for _, x in dlq}
        r.wrongly_dead_lettered = [
            f"invalid not in DLQ: {v[:60]!r}" for v in invalid if v not in dlq_values
        ]
        r.wrongly_dead_lettered += [
            f"valid dead-lettered: {m.key}" for m, _ in valid if m.value in dlq_values
        ]
        # Lost writes: every accepted input is known to its batch in the store.
        for m, c in valid:
            events = by_batch.get(c.batch_id, [])
            kind = type(c).__name__
            if kind == "RegisterBatch":
                ok = any(
                    e.type == "BatchRegistered" and e.data["essay_ids"] == list(c.essay_ids)
                    for e in events
                )
            elif kind == "ProvisionContent":
                ok = any(
                    c.text_storage_id == e.data.get("text_storage_id")
                    or c.text_storage_id in e.data.get("text_storage_ids", ())
                    for e in events
                )
            else:
                ok = any(
                    e.type == "ValidationFailureRecorded"
                    and e.data["file_upload_id"] == c.file_upload_id
                    for e in events
                )
            if not ok:
                r.lost_writes.append(f"{kind} {c.batch_id} {m.value[:40]!r}")
        # Duplicate effects and version gaps, per batch.
        for batch_id, events in by_batch.items():
            versions = sorted(e.version for e in events)
            if versions != list(range(1, len(versions) + 1)):
                r.version_gaps.append(f"{batch_id}: versions {versions[:10]}")
            tsids = Counter(
                e.data["text_storage_id"]
                for e in events
                if e.type in ("SlotAssigned", "ExcessContentProvisioned")
            )
            slots = Counter(e.data["essay_id"] for e in events if e.type == "SlotAssigned")
            completions = sum(
                1 for e in events if e.type == "BatchCompleted" and e.data.get("part", 1) == 1
            )
            r.duplicate_effects += [
                f"{batch_id}: content {t} placed {n}x" for t, n in tsids.items() if n > 1
            ]
            r.duplicate_effects += [
                f"{batch_id}: slot {e} assigned {n}x" for e, n in slots.items() if n > 1
            ]
            if completions > 1:
                r.duplicate_effects.append(f"{batch_id}: completed {completions}x")
        # Outcomes against the scenario's expectations.
        for scenario in scenarios:
            for batch_id, exp in scenario.expected.items():
                self._check_outcome(
                    batch_id,
                    exp.assigned,
                    exp.failed,
                    exp.excess,
                    exp.outcome,
                    by_batch.get(batch_id, []),
                )
        for batch_id in self.probe_expected:
            self._check_outcome(batch_id, 1, 0, 0, "complete", by_batch.get(batch_id, []))
        # Publications: every stored event on the events topic, in order per batch.
        published = Counter(e for e, _, _ in tap.records)
        r.published_records = len(tap.records)
        r.duplicate_publications = sum(n - 1 for n in published.values())
        self._republished_per_restart(published, stored)
        # Before a broker restart, every event stored up to then must have been on the
        # topic; after it, every later event must be, and no earlier one again.
        head, base = self.head_at_broker_restart, self.tap_base
        before = {e for e, _, i in tap.records if i < base}
        after = {e for e, _, i in tap.records if i >= base}
        for e in stored:
            eid = str(event_id_of(e.originator_id, e.version))
            if eid not in (before if e.notification_id <= head else after):
                r.lost_publications.append(f"#{e.notification_id} {e.type}")
            if e.notification_id <= head and eid in after:
                r.republished_after_broker_restart += 1
        first_seen: dict[str, list[int]] = defaultdict(list)
        version_of = {str(event_id_of(e.originator_id, e.version)): e.version for e in stored}
        seen: set[str] = set()
        for eid, key, _ in tap.records:
            if eid not in seen and eid in version_of:
                seen.add(eid)
                first_seen[key].append(version_of[eid])
        for key, versions in first_seen.items():
            if versions != sorted(versions):
                r.out_of_order_publications.append(f"{key}: {versions[:10]}")

    def _republished_per_restart(self, published: Counter[str], stored: list[Any]) -> None:
        """Per kill_outbox: the duplicated publications of the events after its position.

        Each duplicated event is attributed to the restart with the highest position
        below it (a restart republishes only what lies beyond its position).
        """
        kills = sorted(
            (f for f in self.report.faults if f.outbox_position is not None),
            key=lambda f: f.outbox_position or 0,
        )
        for f in kills:
            f.republished = 0
        for e in stored:
            extra = published.get(str(event_id_of(e.originator_id, e.version)), 0) - 1
            owner = None
            for f in kills:
                if (f.outbox_position or 0) < e.notification_id:
                    owner = f
            if extra > 0 and owner is not None:
                owner.republished = (owner.republished or 0) + extra
        self.report.republished_per_outbox_restart = [f.republished or 0 for f in kills]

    def _check_outcome(
        self,
        batch_id: str,
        assigned: int,
        failed: int,
        excess: int,
        outcome: str,
        events: list[StoredEvent],
    ) -> None:
        r = self.report
        done = [e for e in events if e.type == "BatchCompleted"]
        if not done:
            r.unclosed_batches.append(batch_id)
            return
        got = done[0].data["outcome"]
        counts = (
            sum(1 for e in events if e.type == "SlotAssigned"),
            sum(1 for e in events if e.type == "ValidationFailureRecorded"),
            sum(1 for e in events if e.type == "ExcessContentProvisioned"),
        )
        registered = [e for e in events if e.type == "BatchRegistered"]
        if got == "timed_out" and registered:
            waited = (done[0].data["timestamp"] - registered[0].data["timestamp"]).total_seconds()
            if waited < self.o.batch_timeout_seconds:
                r.premature_timeouts.append(f"{batch_id}: timed out after {waited:.1f}s")
        if got == "timed_out" and outcome == "complete":
            r.timed_out_by_delay.append(batch_id)  # a fault delayed it past its deadline
        elif got != outcome or (got == "complete" and counts != (assigned, failed, excess)):
            r.outcome_mismatches.append(
                f"{batch_id}: {got} {counts}, expected {outcome} {(assigned, failed, excess)}"
            )

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
        fleet = Fleet(self.env, self.o.workers, self.log_dir, self.t0)
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
            self.check(service, tap, dlq, scenarios)
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
    with psycopg.connect(**conninfo(settings), autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(settings.database_schema)
            )
        )
    flush_prefix(settings)


# ---------------------------------------------------------------- output


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
