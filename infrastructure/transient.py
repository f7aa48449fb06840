"""What counts as a passing failure of PostgreSQL, Redis or Kafka: the one definition.

A failure of a server the service depends on is never the fault of the
message being processed: it is retried with backoff and nothing is committed
past it. That covers more than connection loss. A read-only database (a
failover to a standby, ``default_transaction_read_only``: SQLSTATE 25006)
arrives from the ``eventsourcing`` library as ``InternalError``; an admin
shutdown (57P01), a full disk (53100), a lock timeout (55P03) as
``OperationalError``. ``is_transient`` recognises them by class and, through
the exception chain, by SQLSTATE class.

Anything else may still be the store's fault (a server error the list does
not know). Before the worker blames a message (``PROCESSING_ERROR``) it asks
``store_writable``: only while the store accepts a write-capable transaction
is a failure the message's fault.
"""

from __future__ import annotations

import errno
import logging
from typing import Any
from urllib.parse import urlsplit

import psycopg
import psycopg_pool
import redis
from aiokafka.errors import KafkaError
from eventsourcing import persistence

from application.service import ConcurrencyExhausted
from infrastructure.settings import Settings, redis_cluster_startup

log = logging.getLogger("batchslot.transient")


class DependencyDown(RuntimeError):
    """A dependency was still failing when the process was asked to stop."""


class StartupTimeout(RuntimeError):
    """A dependency did not answer within STARTUP_TIMEOUT_SECONDS (one line naming it)."""


def where(settings: Settings, dependency: str) -> str:
    """Which server a dependency is, for a log line or an error: host:port and the
    variable that set it, never a password (``Redis at 10.0.0.5:6379 (REDIS_URL)``)."""
    if dependency == "Kafka":
        return f"Kafka at {settings.kafka_bootstrap_servers} (KAFKA_BOOTSTRAP_SERVERS)"
    if dependency == "Redis":
        url = settings.redis_url.get_secret_value()
        if settings.redis_cluster_mode:
            nodes = redis_cluster_startup(url)[1]
            return "Redis at " + ",".join(f"{h}:{p}" for h, p in nodes) + " (REDIS_URL)"
        parts = urlsplit(url)
        address = parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"
        return f"Redis at {address} (REDIS_URL)"
    parts = urlsplit(settings.database_url.get_secret_value())
    return (
        f"PostgreSQL at {parts.hostname}:{parts.port or 5432}/{parts.path.lstrip('/')} "
        "(DATABASE_URL)"
    )


def dependency_of(error: BaseException) -> str | None:
    """Which dependency a failure is of (PostgreSQL, Redis, Kafka), if the class says."""
    module = type(error).__module__
    for prefix, name in (
        ("redis", "Redis"),
        ("aiokafka", "Kafka"),
        ("kafka", "Kafka"),
        ("psycopg", "PostgreSQL"),
        ("eventsourcing", "PostgreSQL"),
    ):
        if module == prefix or module.startswith(prefix + "."):
            return name
    return None


def described(error: BaseException, settings: Settings) -> str:
    """``ConnectionError from Redis at 127.0.0.1:6379 (REDIS_URL)``: what a retry log says."""
    dependency = dependency_of(error)
    name = type(error).__name__
    return name if dependency is None else f"{name} from {where(settings, dependency)}"


TRANSIENT: tuple[type[BaseException], ...] = (
    # PostgreSQL through the event-store library, and through psycopg directly.
    persistence.OperationalError,  # includes ConnectionUnavailableError (pool timeout)
    persistence.InterfaceError,
    persistence.InternalError,  # read-only transaction (25006), transaction state
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.InternalError,
    psycopg_pool.PoolTimeout,
    # Redis.
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a replica after a failover
    # Redis Cluster: a slot moving, a primary failing over, the cluster down meanwhile.
    redis.exceptions.AskError,  # and MovedError
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterError,  # ClusterDownError, MasterDownError
    redis.exceptions.SlotNotCoveredError,
    # Kafka (every aiokafka error is about the broker or the connection).
    KafkaError,
    # Ours and the OS's.
    ConcurrencyExhausted,
    DependencyDown,
    TimeoutError,
    ConnectionError,
)

# SQLSTATE classes and codes that say "the server cannot do it now", not "this data is wrong".
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")
_TRANSIENT_SQLSTATES = ("25006", "55P03", "55006")


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of the first psycopg error in ``error``'s chain, if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "sqlstate", None)
        if isinstance(code, str) and code:
            return code
        current = current.__cause__ or current.__context__
    return None


# A client library reading from a socket that was closed under it (the stall watchdog
# recycles a part's connections to free a call blocked on a silent server): the OS
# says EBADF, or the library's buffer "I/O operation on closed file".
_CLIENT_MODULES = ("redis", "psycopg", "psycopg_pool", "aiokafka", "eventsourcing")


def closed_under_a_call(error: BaseException) -> bool:
    """True when ``error`` is a client library's read from a connection closed meanwhile."""
    closed = (isinstance(error, OSError) and error.errno == errno.EBADF) or (
        isinstance(error, ValueError) and "closed file" in str(error)
    )
    if not closed:
        return False
    tb = error.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module.split(".", 1)[0] in _CLIENT_MODULES:
            return True
        tb = tb.tb_next
    return False


def is_transient(error: BaseException) -> bool:
    """True for a failure of PostgreSQL, Redis or Kafka (retry; never the message's fault)."""
    if isinstance(error, TRANSIENT) or closed_under_a_call(error):
        return True
    code = sqlstate(error)
    return code is not None and (
        code.startswith(_TRANSIENT_SQLSTATE_CLASSES) or code in _TRANSIENT_SQLSTATES
    )


def store_writable(service: Any) -> bool:
    """Whether the event store accepts writes now (a connection from the service's own pool).

    ``SHOW transaction_read_only`` is what a write would meet: it is ``on`` on a
    standby, in a database or role with ``default_transaction_read_only``, and
    after a failover to a replica. Any failure to ask counts as not writable.
    """
    try:
        datastore = service.recorder.datastore
        with datastore.get_connection() as conn, conn.transaction():
            row = conn.execute("SHOW transaction_read_only").fetchone()
    except Exception as e:
        log.warning("event store probe failed", extra={"error": type(e).__name__})
        return False
    value = row["transaction_read_only"] if isinstance(row, dict) else row[0]
    return str(value).lower() == "off"
