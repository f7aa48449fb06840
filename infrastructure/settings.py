"""Configuration from the environment, validated once at start-up.

Every name is in README "Configuration". URLs that can hold a password are
kept as ``SecretStr``: they never appear in a repr, a log line or an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Literal
from urllib.parse import quote, unquote_plus, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/batchslot"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_KAFKA = "127.0.0.1:9092"


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the variable."""


class Topics(BaseModel):
    model_config = ConfigDict(frozen=True)
    registered: str = "batch.essays.registered.v1"
    provisioned: str = "essay.content.provisioned.v1"
    failed: str = "essay.validation.failed.v1"
    events: str = "batch.events.v1"
    dlq: str = "batch.dlq.v1"

    @property
    def inbound(self) -> tuple[str, str, str]:
        return (self.registered, self.provisioned, self.failed)

    @property
    def by_kind(self) -> dict[str, str]:
        """Inbound topic by message kind (registered, provisioned, failed)."""
        return {
            "registered": self.registered,
            "provisioned": self.provisioned,
            "failed": self.failed,
        }

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.inbound, self.events, self.dlq)


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: SecretStr = SecretStr(DEFAULT_DATABASE_URL)
    database_schema: str = Field(default="public", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    database_pool_size: int = Field(default=5, ge=1, le=100)
    database_lock_timeout_seconds: int = Field(default=5, ge=1, le=600)
    # Bounds on every PostgreSQL connection (infrastructure/postgres/timeouts.py, docs/faults.md).
    database_connect_timeout_seconds: int = Field(default=5, ge=1, le=600)
    database_pool_timeout_seconds: int = Field(default=10, ge=1, le=600)
    database_statement_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    database_call_timeout_seconds: float | None = Field(default=None, gt=0, le=3600)
    database_tcp_user_timeout_seconds: float = Field(default=10.0, ge=0, le=600)
    database_keepalives_idle_seconds: int = Field(default=5, ge=1, le=3600)
    database_keepalives_interval_seconds: int = Field(default=2, ge=1, le=600)
    database_keepalives_count: int = Field(default=3, ge=1, le=100)
    redis_url: SecretStr = SecretStr(DEFAULT_REDIS_URL)
    redis_key_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._:-]{0,64}$")
    redis_socket_timeout_seconds: float = Field(default=5.0, gt=0, le=600)
    redis_connect_timeout_seconds: float = Field(default=5.0, gt=0, le=600)
    redis_health_check_interval_seconds: int = Field(default=10, ge=0, le=3600)
    kafka_bootstrap_servers: str = DEFAULT_KAFKA
    kafka_bootstrap_explicit: bool = False
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_consumer_group: str = "batch-slot-service"
    kafka_topic_partitions: int = Field(default=3, ge=1, le=1000)
    # Only for brokers that support the idempotent producer (Tansu does not).
    kafka_enable_idempotence: bool = False
    # Client-side bounds on every Kafka request (infrastructure/kafka/clients.py, docs/faults.md).
    kafka_request_timeout_ms: int = Field(default=30_000, ge=1000, le=600_000)
    kafka_session_timeout_ms: int = Field(default=10_000, ge=1000, le=600_000)
    kafka_metadata_max_age_ms: int = Field(default=60_000, ge=1000, le=3_600_000)
    kafka_connections_max_idle_ms: int = Field(default=540_000, ge=1000, le=3_600_000)
    # How long a fetch may wait at the broker for data (infrastructure/kafka/clients.py).
    kafka_fetch_max_wait_ms: int = Field(default=10, ge=1, le=10_000)
    topics: Topics = Topics()
    batch_timeout_seconds: int = Field(default=86400, ge=1)
    pending_ttl_seconds: int = Field(default=86400, ge=1)
    sweep_interval_seconds: float = Field(default=30.0, gt=0)
    startup_timeout_seconds: float = Field(default=60.0, ge=0)
    # The stall watchdog (infrastructure/processes/watchdog.py): work waiting, no progress.
    stall_timeout_seconds: float = Field(default=60.0, gt=0, le=86400)
    aggregate_cache_size: int = Field(default=10000, ge=0)
    source_service: str = "batch-slot-service"
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # /healthz and /readyz on METRICS_PORT (infrastructure/health/).
    healthz_max_silence_seconds: float = Field(default=10.0, gt=0, le=3600)
    readyz_max_lag_events: int = Field(default=10000, ge=0)
    readyz_probe_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    readyz_cache_seconds: float = Field(default=2.0, ge=0, le=60)
    pending_age_interval_seconds: float = Field(default=60.0, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, v: SecretStr) -> SecretStr:
        parts = urlsplit(v.get_secret_value())
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise ValueError("must look like postgresql://user[:password]@host[:port]/dbname")
        if not parts.path.strip("/"):
            raise ValueError("must name a database: postgresql://user@host:5432/dbname")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: SecretStr) -> SecretStr:
        if urlsplit(v.get_secret_value()).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must look like redis://[user:password@]host:6379/0")
        return v

    @property
    def database_call_deadline_seconds(self) -> float:
        """Client-side bound on one PostgreSQL call: the server's statement_timeout
        plus a margin, unless DATABASE_CALL_TIMEOUT_SECONDS says otherwise."""
        if self.database_call_timeout_seconds is not None:
            return self.database_call_timeout_seconds
        return self.database_statement_timeout_seconds + 5.0

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap_servers(cls, v: str) -> str:
        for entry in v.split(","):
            host, sep, port = entry.strip().rpartition(":")
            if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"{entry.strip()!r} is not host:port; use host:port[,host:port...],"
                    " e.g. kafka-1:9092,kafka-2:9092"
                )
        return v

    @field_validator("kafka_ssl_cafile")
    @classmethod
    def _cafile(cls, v: str | None) -> str | None:
        if v is not None and not (os.path.isfile(v) and os.access(v, os.R_OK)):
            raise ValueError(f"no readable file at {v!r} (the CA certificate, PEM)")
        return v

    def redacted(self) -> dict[str, object]:
        """Settings safe to log: passwords replaced by ***."""
        data = self.model_dump(mode="json", exclude={"kafka_sasl_password"})
        data["database_url"] = redact_url(self.database_url.get_secret_value())
        data["redis_url"] = redact_url(self.redis_url.get_secret_value())
        return data

    def secrets(self) -> list[str]:
        """Every password in the settings (every form), longest first: to mask in any text."""
        found = url_passwords(self.database_url.get_secret_value())
        found += url_passwords(self.redis_url.get_secret_value())
        if self.kafka_sasl_password is not None and self.kafka_sasl_password.get_secret_value():
            password = self.kafka_sasl_password.get_secret_value()
            found += [password, quote(password, safe="")]
        return sorted(set(found), key=len, reverse=True)


# Query parameters that carry a password: ``?password=`` (redis-py's form for unix
# sockets, and libpq's), libpq's ``sslpassword``, any ``...password``.
_SECRET_QUERY = re.compile(r"(?i)(^|&)([^=&]*password)=([^&]*)")


def redact_url(url: str) -> str:
    """The URL with every password replaced by ***: userinfo and query string alike."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = _SECRET_QUERY.sub(lambda m: f"{m.group(1)}{m.group(2)}=***", parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    # Text replacement, not urlunsplit: that would turn unix:///path into unix:/path.
    scheme_and_netloc = f"{parts.scheme}://{parts.netloc}"
    if url.startswith(scheme_and_netloc):
        url = f"{parts.scheme}://{netloc}" + url[len(scheme_and_netloc) :]
    if query != parts.query:
        url = url.replace(f"?{parts.query}", f"?{query}", 1)
    return url


def url_passwords(url: str) -> list[str]:
    """Every password a URL carries, as written and decoded (to mask them in any text)."""
    parts = urlsplit(url)
    found = [parts.password] if parts.password else []
    found += [m.group(3) for m in _SECRET_QUERY.finditer(parts.query) if m.group(3)]
    found += [unquote_plus(p) for p in found]
    found += [quote(p, safe="") for p in found]
    return sorted({p for p in found if p}, key=len, reverse=True)


_ENV: dict[str, str] = {
    "DATABASE_URL": "database_url",
    "DATABASE_SCHEMA": "database_schema",
    "DATABASE_POOL_SIZE": "database_pool_size",
    "DATABASE_LOCK_TIMEOUT_SECONDS": "database_lock_timeout_seconds",
    "DATABASE_CONNECT_TIMEOUT_SECONDS": "database_connect_timeout_seconds",
    "DATABASE_POOL_TIMEOUT_SECONDS": "database_pool_timeout_seconds",
    "DATABASE_STATEMENT_TIMEOUT_SECONDS": "database_statement_timeout_seconds",
    "DATABASE_CALL_TIMEOUT_SECONDS": "database_call_timeout_seconds",
    "DATABASE_TCP_USER_TIMEOUT_SECONDS": "database_tcp_user_timeout_seconds",
    "DATABASE_KEEPALIVES_IDLE_SECONDS": "database_keepalives_idle_seconds",
    "DATABASE_KEEPALIVES_INTERVAL_SECONDS": "database_keepalives_interval_seconds",
    "DATABASE_KEEPALIVES_COUNT": "database_keepalives_count",
    "REDIS_URL": "redis_url",
    "REDIS_KEY_PREFIX": "redis_key_prefix",
    "REDIS_SOCKET_TIMEOUT_SECONDS": "redis_socket_timeout_seconds",
    "REDIS_CONNECT_TIMEOUT_SECONDS": "redis_connect_timeout_seconds",
    "REDIS_HEALTH_CHECK_INTERVAL_SECONDS": "redis_health_check_interval_seconds",
    "KAFKA_BOOTSTRAP_SERVERS": "kafka_bootstrap_servers",
    "KAFKA_SECURITY_PROTOCOL": "kafka_security_protocol",
    "KAFKA_SASL_MECHANISM": "kafka_sasl_mechanism",
    "KAFKA_SASL_USERNAME": "kafka_sasl_username",
    "KAFKA_SASL_PASSWORD": "kafka_sasl_password",
    "KAFKA_SSL_CAFILE": "kafka_ssl_cafile",
    "KAFKA_CONSUMER_GROUP": "kafka_consumer_group",
    "KAFKA_TOPIC_PARTITIONS": "kafka_topic_partitions",
    "KAFKA_ENABLE_IDEMPOTENCE": "kafka_enable_idempotence",
    "KAFKA_REQUEST_TIMEOUT_MS": "kafka_request_timeout_ms",
    "KAFKA_SESSION_TIMEOUT_MS": "kafka_session_timeout_ms",
    "KAFKA_METADATA_MAX_AGE_MS": "kafka_metadata_max_age_ms",
    "KAFKA_CONNECTIONS_MAX_IDLE_MS": "kafka_connections_max_idle_ms",
    "KAFKA_FETCH_MAX_WAIT_MS": "kafka_fetch_max_wait_ms",
    "BATCH_TIMEOUT_SECONDS": "batch_timeout_seconds",
    "PENDING_TTL_SECONDS": "pending_ttl_seconds",
    "SWEEP_INTERVAL_SECONDS": "sweep_interval_seconds",
    "STARTUP_TIMEOUT_SECONDS": "startup_timeout_seconds",
    "STALL_TIMEOUT_SECONDS": "stall_timeout_seconds",
    "AGGREGATE_CACHE_SIZE": "aggregate_cache_size",
    "SOURCE_SERVICE": "source_service",
    "METRICS_PORT": "metrics_port",
    "HEALTHZ_MAX_SILENCE_SECONDS": "healthz_max_silence_seconds",
    "READYZ_MAX_LAG_EVENTS": "readyz_max_lag_events",
    "READYZ_PROBE_TIMEOUT_SECONDS": "readyz_probe_timeout_seconds",
    "READYZ_CACHE_SECONDS": "readyz_cache_seconds",
    "PENDING_AGE_INTERVAL_SECONDS": "pending_age_interval_seconds",
    "LOG_LEVEL": "log_level",
}
_TOPIC_ENV = {
    "TOPIC_BATCH_REGISTERED": "registered",
    "TOPIC_CONTENT_PROVISIONED": "provisioned",
    "TOPIC_VALIDATION_FAILED": "failed",
    "TOPIC_BATCH_EVENTS": "events",
    "TOPIC_DLQ": "dlq",
}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise SettingsError naming the variable."""
    env = os.environ if environ is None else environ
    fields: dict[str, object] = {}
    for var, field in _ENV.items():
        value = env.get(var, "").strip()
        if value:
            fields[field] = value
    topics = {f: env[v].strip() for v, f in _TOPIC_ENV.items() if env.get(v, "").strip()}
    if topics:
        fields["topics"] = Topics(**topics)
    fields["kafka_bootstrap_explicit"] = bool(env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip())
    try:
        settings = Settings.model_validate(fields)
    except ValidationError as e:
        first = e.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        var = next((k for k, f in _ENV.items() if f == field), field.upper())
        raise SettingsError(f"{var}: {first['msg']}") from None
    _check_kafka_security(settings)
    return settings


def _check_kafka_security(s: Settings) -> None:
    """What one variable alone cannot say: SASL needs a username and a password."""
    protocol = s.kafka_security_protocol
    if not protocol.startswith("SASL_"):
        return
    if not s.kafka_sasl_username:
        raise SettingsError(
            f"KAFKA_SASL_USERNAME: required with KAFKA_SECURITY_PROTOCOL={protocol}"
        )
    if s.kafka_sasl_password is None or not s.kafka_sasl_password.get_secret_value():
        raise SettingsError(
            f"KAFKA_SASL_PASSWORD: required with KAFKA_SECURITY_PROTOCOL={protocol}"
        )
