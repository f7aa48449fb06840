"""Turn a failure the operator can fix into one line that names the setting to fix.

Covers invalid settings, an unreachable or refusing PostgreSQL, Redis or
Kafka broker. URLs are shown redacted; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import psycopg
import psycopg_pool
import redis
from eventsourcing import persistence

from infrastructure.postgres.store import StoreMissing
from infrastructure.settings import SettingsError, load_settings, redact_url
from infrastructure.transient import StartupTimeout

_POSTGRES = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg_pool.PoolTimeout,
    persistence.OperationalError,
    persistence.InterfaceError,
    persistence.ConnectionUnavailableError,
)
_REDIS = (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError)


class DependencyUnavailable(RuntimeError):
    """Raise with a one-line message when a server the command needs cannot be used."""


def dependency_error(e: BaseException) -> str | None:
    """The one-line message for an operator-fixable failure, or None for a bug."""
    if isinstance(e, SettingsError):
        return f"invalid configuration: {e}"
    if isinstance(e, (DependencyUnavailable, StoreMissing, StartupTimeout)):
        return str(e)
    if isinstance(e, _POSTGRES):
        return f"PostgreSQL unreachable at {_url('database_url')} (DATABASE_URL): {_first(e)}"
    if isinstance(e, redis.AuthenticationError) or (
        isinstance(e, redis.ResponseError) and str(e).startswith(("NOAUTH", "WRONGPASS"))
    ):
        return f"Redis refused the credentials at {_url('redis_url')} (REDIS_URL): {_first(e)}"
    if isinstance(e, redis.ResponseError) and "DB index is out of range" in str(e):
        return (
            f"REDIS_URL: the Redis at {_url('redis_url')} has no such database ({_first(e)}): "
            "use a database number the server has (0-15 unless its `databases` says more)"
        )
    if isinstance(e, redis.exceptions.InvalidResponse):
        return (
            f"REDIS_URL: the server at {_url('redis_url')} does not answer as Redis does "
            f"({_first(e)}): check the host and port"
        )
    if isinstance(e, _REDIS):
        return f"Redis unreachable at {_url('redis_url')} (REDIS_URL): {_first(e)}"
    if _is_kafka_connection_error(e):
        return f"Kafka broker unreachable (KAFKA_BOOTSTRAP_SERVERS): {_first(e)}"
    return None


def _is_kafka_connection_error(e: BaseException) -> bool:
    try:
        from aiokafka.errors import KafkaConnectionError
    except ImportError:  # pragma: no cover - aiokafka is a dependency
        return False
    return isinstance(e, KafkaConnectionError)


def _url(field: str) -> str:
    try:
        settings = load_settings()
    except SettingsError:
        return "?"
    return redact_url(getattr(settings, field).get_secret_value())


def _first(e: BaseException) -> str:
    """The exception's first non-empty line (libpq's span several), passwords masked."""
    text = str(e) or type(e).__name__
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), text)
    for secret in _passwords():
        line = line.replace(secret, "***")
    return line


def _passwords() -> list[str]:
    try:
        settings = load_settings()
    except SettingsError:
        return []
    return settings.secrets()
