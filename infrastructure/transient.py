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

import logging
from typing import Any

import psycopg
import psycopg_pool
import redis
from aiokafka.errors import KafkaError
from eventsourcing import persistence

from application.service import ConcurrencyExhausted

log = logging.getLogger("batchslot.transient")


class DependencyDown(RuntimeError):
    """A dependency was still failing when the process was asked to stop."""


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


def is_transient(error: BaseException) -> bool:
    """True for a failure of PostgreSQL, Redis or Kafka (retry; never the message's fault)."""
    if isinstance(error, TRANSIENT):
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
