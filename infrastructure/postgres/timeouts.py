"""Bounds on every PostgreSQL connection: a silent server never hangs a call.

Three layers, all from Settings (docs/configuration.md, docs/faults.md):

- libpq, per connection: ``connect_timeout``; TCP keepalives
  (``keepalives_idle`` / ``_interval`` / ``_count``) and ``tcp_user_timeout``,
  which make the kernel drop a connection whose peer has vanished (failover to
  another host, a NAT or load balancer that forgot the flow) within seconds
  instead of the operating system's hours; ``options`` sets the server's
  ``statement_timeout`` at connection start (no extra round trip).
- Client side, per call: ``BoundedConnection.wait`` gives up on a call that
  has had no complete answer within ``Settings.database_call_deadline_seconds``
  (statement_timeout plus a margin), closes the connection and raises
  ``psycopg.OperationalError``. This is what frees a call when TCP itself is
  still alive but nothing answers (a proxy or middlebox that holds the flow
  open): keepalives and tcp_user_timeout cannot see that.
- A call that times out also drains its pool: the pool's other connections
  took the same road and are likely silent too, and each would otherwise cost
  a full deadline before it is found out.
- ``recycle()``: the stall watchdog's lever. It shuts down the socket of every
  connection that is inside a call, so a thread blocked in a read returns at
  once with an error (and the caller retries on a fresh connection), and
  drains every pool.

Every error raised here is a ``psycopg.OperationalError``; the ``eventsourcing``
datastore turns it into its ``OperationalError``, which every loop retries
as transient (never dead-lettered).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import weakref
from typing import Any

import psycopg
from eventsourcing.postgres import PostgresFactory
from psycopg import errors

from infrastructure.settings import Settings

log = logging.getLogger(__name__)

# Environment keys of the library's factory for our bounds (event_store_env).
CALL_TIMEOUT_KEY = "BATCHSLOT_PG_CALL_TIMEOUT"
LIBPQ_KEYS = {
    "keepalives": "BATCHSLOT_PG_KEEPALIVES",
    "keepalives_idle": "BATCHSLOT_PG_KEEPALIVES_IDLE",
    "keepalives_interval": "BATCHSLOT_PG_KEEPALIVES_INTERVAL",
    "keepalives_count": "BATCHSLOT_PG_KEEPALIVES_COUNT",
    "tcp_user_timeout": "BATCHSLOT_PG_TCP_USER_TIMEOUT",
    "connect_timeout": "BATCHSLOT_PG_CONNECT_TIMEOUT",
    "options": "BATCHSLOT_PG_OPTIONS",
}


def libpq_bounds(settings: Settings) -> dict[str, Any]:
    """libpq connection parameters that bound a connection (see module docstring)."""
    statement_ms = int(settings.database_statement_timeout_seconds * 1000)
    return {
        "keepalives": 1,
        "keepalives_idle": settings.database_keepalives_idle_seconds,
        "keepalives_interval": settings.database_keepalives_interval_seconds,
        "keepalives_count": settings.database_keepalives_count,
        "tcp_user_timeout": int(settings.database_tcp_user_timeout_seconds * 1000),
        "connect_timeout": settings.database_connect_timeout_seconds,
        "options": f"-c statement_timeout={statement_ms}",
    }


def factory_env(settings: Settings) -> dict[str, str]:
    """The bounds as environment entries for ``BoundedPostgresFactory``."""
    env = {LIBPQ_KEYS[k]: str(v) for k, v in libpq_bounds(settings).items()}
    env[CALL_TIMEOUT_KEY] = str(settings.database_call_deadline_seconds)
    return env


class CallTimeout(errors.OperationalError):
    """No complete answer from PostgreSQL within the call deadline; connection closed."""


_BUSY: weakref.WeakSet[BoundedConnection] = weakref.WeakSet()
_POOLS: weakref.WeakSet[Any] = weakref.WeakSet()
_BUSY_LOCK = threading.Lock()
_last_timeout = float("-inf")  # time.monotonic() of the last call that timed out


def seconds_since_timeout() -> float:
    """Seconds since a PostgreSQL call last timed out in this process (inf: never)."""
    return time.monotonic() - _last_timeout


def _drain(pool: Any) -> None:
    with contextlib.suppress(Exception):
        pool.drain()


class BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every call gives up after ``call_timeout`` seconds."""

    call_timeout: float | None = None

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        bound = timeout if timeout is not None else self.call_timeout
        with _BUSY_LOCK:
            _BUSY.add(self)
        started = time.monotonic()
        try:
            return super().wait(gen, interval=interval, timeout=bound)
        except errors._WaitTimeout:
            if timeout is not None:  # the caller's own bound (e.g. notifies(timeout=…))
                raise
            log.warning(
                "PostgreSQL call timed out; closing the connection",
                extra={"after_seconds": round(time.monotonic() - started, 1)},
            )
            global _last_timeout
            _last_timeout = time.monotonic()
            with contextlib.suppress(Exception):
                self.pgconn.finish()
            pool = getattr(self, "_pool", None)
            if pool is not None:
                _drain(pool)
            raise CallTimeout(
                f"no answer from PostgreSQL within {bound:g}s; connection closed"
            ) from None
        finally:
            with _BUSY_LOCK:
                _BUSY.discard(self)

    @classmethod
    def with_timeout(cls, call_timeout: float | None) -> type[BoundedConnection]:
        return type("BoundedConnection", (cls,), {"call_timeout": call_timeout})


def recycle() -> int:
    """Shut down the socket of every connection inside a call; return how many.

    The blocked read returns at once (the peer "closed" the connection), the
    call raises ``OperationalError``, and its caller retries on a new one.
    """
    with _BUSY_LOCK:
        busy = list(_BUSY)
    count = 0
    for conn in busy:
        with contextlib.suppress(Exception):
            fd = conn.pgconn.socket
            sock = socket.socket(fileno=fd)
            try:
                sock.shutdown(socket.SHUT_RDWR)
                count += 1
            finally:
                sock.detach()  # the fd stays libpq's
    with _BUSY_LOCK:
        pools = list(_POOLS)
    for pool in pools:
        _drain(pool)
    if count:  # calls were stuck: PostgreSQL counts as "in trouble" for a while
        global _last_timeout
        _last_timeout = time.monotonic()
    return count


def busy_connections() -> int:
    with _BUSY_LOCK:
        return len(_BUSY)


class BoundedPostgresFactory(PostgresFactory):
    """The library's PostgreSQL factory, with our bounds on every pooled connection.

    The library builds its pool from host/port/user/password only; this adds
    the libpq bounds to the pool's connection arguments and the client-side
    call deadline to its connection class. Every connection of the event store
    goes through this pool, including the library's LISTEN subscription.
    """

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        pool: Any = self.datastore.pool
        extra: dict[str, Any] = {}
        for key, var in LIBPQ_KEYS.items():
            value = self.env.get(var)
            if value:
                extra[key] = value
        pool.kwargs = {**(pool.kwargs or {}), **extra}
        call_timeout = self.env.get(CALL_TIMEOUT_KEY)
        pool.connection_class = BoundedConnection.with_timeout(
            float(call_timeout) if call_timeout else None
        )
        with _BUSY_LOCK:
            _POOLS.add(pool)


def factory_topic() -> str:
    return f"{__name__}:{BoundedPostgresFactory.__name__}"
