"""Configuration from the environment, validated once at start-up.

Every name is in docs/configuration.md. URLs that can hold a password are
kept as ``SecretStr``: they never appear in a repr, a log line or an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote_plus, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from application.messages import HULEEDU_EVENT_TYPE_OF, WireProfile
from projections.huleedu import HuleEduTopics

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/batchslot"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_KAFKA = "127.0.0.1:9092"


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the variable."""


# WIRE_PROFILE=huleedu (CONTRACT §7): HuleEdu's inbound topic names are the defaults.
HULEEDU_INBOUND = {
    kind: HULEEDU_EVENT_TYPE_OF[kind] for kind in ("registered", "provisioned", "failed")
}
HULEEDU_SOURCE_SERVICE = "essay-lifecycle-service"


class Topics(BaseModel):
    model_config = ConfigDict(frozen=True)
    registered: str = "batch.essays.registered.v1"
    provisioned: str = "essay.content.provisioned.v1"
    failed: str = "essay.validation.failed.v1"
    events: str = "batch.events.v1"
    dlq: str = "batch.dlq.v1"
    # Published only with WIRE_PROFILE=huleedu (projections/huleedu.py).
    huleedu_completed: str = HuleEduTopics.completed
    huleedu_slot_assigned: str = HuleEduTopics.slot_assigned
    huleedu_excess: str = HuleEduTopics.excess

    @property
    def huleedu(self) -> HuleEduTopics:
        return HuleEduTopics(
            completed=self.huleedu_completed,
            slot_assigned=self.huleedu_slot_assigned,
            excess=self.huleedu_excess,
        )

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
    # The long-running processes create the database, schema and tables on start; false
    # for deployments that migrate separately (`batchctl init`). Other commands never do.
    database_auto_create: bool = True
    redis_url: SecretStr = SecretStr(DEFAULT_REDIS_URL)
    redis_key_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._:-]{0,64}$")
    redis_socket_timeout_seconds: float = Field(default=5.0, gt=0, le=600)
    redis_connect_timeout_seconds: float = Field(default=5.0, gt=0, le=600)
    redis_health_check_interval_seconds: int = Field(default=10, ge=0, le=3600)
    # A Redis Cluster (also chosen by a redis+cluster:// URL); see infrastructure/redis/client.py.
    redis_cluster: bool = False
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
    # Which wire the service speaks besides its own (CONTRACT §7): "huleedu" makes
    # HuleEdu's inbound topics the defaults and publishes HuleEdu's outbound events.
    wire_profile: WireProfile = "native"
    batch_timeout_seconds: int = Field(default=86400, ge=1)
    pending_ttl_seconds: int = Field(default=86400, ge=1)
    sweep_interval_seconds: float = Field(default=30.0, gt=0)
    startup_timeout_seconds: float = Field(default=60.0, ge=0)
    # The stall watchdog (infrastructure/processes/watchdog.py): work waiting, no progress.
    stall_timeout_seconds: float = Field(default=60.0, gt=0, le=86400)
    # Follower leases (infrastructure/postgres/lease.py): one instance per follower per store.
    lease_ttl_seconds: float = Field(default=5.0, ge=1, le=600)
    lease_retry_seconds: float = Field(default=1.0, ge=0.05, le=60)
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
    # Tracing (infrastructure/tracing.py), from the standard OTEL_* variables: off
    # ("none") unless OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER asks for it.
    otel_traces_exporter: Literal["none", "otlp", "console"] = "none"
    otel_traces_endpoint: str | None = None  # the OTLP/HTTP traces URL (exporter "otlp")
    otel_service_name: str | None = None  # default: SOURCE_SERVICE

    @property
    def huleedu_topics(self) -> HuleEduTopics | None:
        """HuleEdu's outbound topics, published to with WIRE_PROFILE=huleedu only."""
        return self.topics.huleedu if self.wire_profile == "huleedu" else None

    @property
    def all_topics(self) -> tuple[str, ...]:
        """Every topic the service reads or writes (created when missing)."""
        extra = self.huleedu_topics
        return (*self.topics.all, *(extra.all if extra else ()))

    @property
    def tracing_enabled(self) -> bool:
        return self.otel_traces_exporter != "none"

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
        url = v.get_secret_value()
        scheme = urlsplit(url).scheme
        if scheme in CLUSTER_SCHEMES:
            redis_cluster_startup(url)  # raises ValueError naming the bad host
        elif scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                "must look like redis://[user:password@]host:6379/0 or, for a Redis "
                "Cluster, redis+cluster://[user:password@]host1:6379,host2:6379/0"
            )
        else:
            _redis_db(url)  # raises ValueError: never silently database 0
        return v

    @property
    def redis_cluster_mode(self) -> bool:
        """A Redis Cluster: REDIS_CLUSTER=true or a redis+cluster:// URL."""
        return self.redis_cluster or urlsplit(self.redis_url.get_secret_value()).scheme in (
            CLUSTER_SCHEMES
        )

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
        if self.otel_traces_endpoint is not None:
            data["otel_traces_endpoint"] = redact_url(self.otel_traces_endpoint)
        return data

    def secrets(self) -> list[str]:
        """Every password in the settings (every form), longest first: to mask in any text."""
        found = url_passwords(self.database_url.get_secret_value())
        found += url_passwords(self.redis_url.get_secret_value())
        if self.otel_traces_endpoint is not None:
            found += url_passwords(self.otel_traces_endpoint)
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


def _redis_db(url: str) -> int:
    """The database number of a redis://, rediss:// or unix:// URL (path or ``?db=``).

    redis-py ignores a number it cannot read and uses database 0, another
    deployment's keys; so anything but a number is refused (whether the server
    has that database is its answer to SELECT: ``DB index is out of range``).
    """
    parts = urlsplit(url)
    path = parts.path.strip("/") if parts.scheme != "unix" else ""
    given = [("the path", path)] if path else []
    given += [("?db=", v) for k, v in parse_qsl(parts.query) if k == "db"]
    number = 0
    for where, text in given:
        if not text.isascii() or not text.isdigit():
            raise ValueError(
                f"the database ({where}) must be a number, not {text!r}: redis://host:6379/0"
            )
        number = int(text)
    return number


def redis_cluster_startup(url: str) -> tuple[str, list[tuple[str, int]]]:
    """A Redis Cluster URL as redis-py takes it (plain scheme, the first host) and every
    start-up node it names (``redis+cluster://[user:pw@]h1:6379,h2:6379/0``; a plain
    ``redis://host:port/0`` with REDIS_CLUSTER=true names one). ValueError if malformed."""
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES.get(parts.scheme, parts.scheme)
    if scheme not in ("redis", "rediss"):
        raise ValueError("a Redis Cluster is reached over TCP: redis+cluster://host:6379/0")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0: end the URL with /0")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for entry in hosts.split(","):
        host, sep, port = entry.strip().rpartition(":")
        if not sep and entry.strip():
            host, port = entry.strip(), "6379"
        if not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{entry.strip()!r} is not host:port; use host1:6379,host2:6379")
        nodes.append((host.strip("[]"), int(port)))
    first = f"{nodes[0][0]}:{nodes[0][1]}"
    netloc = f"{userinfo}@{first}" if userinfo else first
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{netloc}/0{query}", nodes


def url_passwords(url: str) -> list[str]:
    """Every password a URL carries, as written and decoded (to mask them in any text)."""
    parts = urlsplit(url)
    found = [parts.password] if parts.password else []
    found += [m.group(3) for m in _SECRET_QUERY.finditer(parts.query) if m.group(3)]
    found += [unquote_plus(p) for p in found]
    found += [quote(p, safe="") for p in found]
    return sorted({p for p in found if p}, key=len, reverse=True)


# Every field is read from the variable of its own name upper-cased, except these,
# which other variables set (KAFKA_BOOTSTRAP_SERVERS, TOPIC_*, the OTEL_* variables).
_NOT_FROM_OWN_VARIABLE = frozenset(
    {
        "kafka_bootstrap_explicit",
        "topics",
        "otel_traces_exporter",
        "otel_traces_endpoint",
        "otel_service_name",
    }
)
_ENV: dict[str, str] = {
    name.upper(): name for name in Settings.model_fields if name not in _NOT_FROM_OWN_VARIABLE
}
_TOPIC_ENV = {
    "TOPIC_BATCH_REGISTERED": "registered",
    "TOPIC_CONTENT_PROVISIONED": "provisioned",
    "TOPIC_VALIDATION_FAILED": "failed",
    "TOPIC_BATCH_EVENTS": "events",
    "TOPIC_DLQ": "dlq",
    "TOPIC_HULEEDU_COMPLETED": "huleedu_completed",
    "TOPIC_HULEEDU_SLOT_ASSIGNED": "huleedu_slot_assigned",
    "TOPIC_HULEEDU_EXCESS": "huleedu_excess",
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
    if fields.get("wire_profile") == "huleedu":
        topics = {**HULEEDU_INBOUND, **topics}
        fields.setdefault("source_service", HULEEDU_SOURCE_SERVICE)
    if topics:
        fields["topics"] = Topics(**topics)
    fields["kafka_bootstrap_explicit"] = bool(env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip())
    fields.update(_tracing_fields(env))
    try:
        settings = Settings.model_validate(fields)
    except ValidationError as e:
        first = e.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        var = next((k for k, f in _ENV.items() if f == field), field.upper())
        raise SettingsError(f"{var}: {first['msg']}") from None
    _check_kafka_security(settings)
    _check_redis_cluster(settings)
    _check_lease(settings)
    return settings


OTLP_HTTP_DEFAULT = "http://localhost:4318/v1/traces"  # the OTLP/HTTP exporter's default
_EXPORTERS = ("none", "otlp", "console")


def _tracing_fields(env: Mapping[str, str]) -> dict[str, object]:
    """Tracing from the standard OpenTelemetry variables (the SDK's own meaning).

    On when ``OTEL_TRACES_EXPORTER`` is ``otlp`` or ``console``, or when it is unset
    and an OTLP endpoint is (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, used as it is,
    or ``OTEL_EXPORTER_OTLP_ENDPOINT``, to which ``/v1/traces`` is added). Off when
    ``OTEL_SDK_DISABLED=true``. Only OTLP over HTTP (protobuf) is shipped.
    """

    def get(name: str) -> str:
        return env.get(name, "").strip()

    exporter = get("OTEL_TRACES_EXPORTER").lower()
    if exporter not in ("", *_EXPORTERS):
        raise SettingsError(f"OTEL_TRACES_EXPORTER: {exporter!r} is not one of {_EXPORTERS}")
    endpoint_var, endpoint = (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
    )
    if not endpoint and get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint_var = "OTEL_EXPORTER_OTLP_ENDPOINT"
        endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT").rstrip("/") + "/v1/traces"
    if not exporter:
        exporter = "otlp" if endpoint else "none"
    if get("OTEL_SDK_DISABLED").lower() == "true":
        exporter = "none"
    fields: dict[str, object] = {"otel_traces_exporter": exporter}
    if get("OTEL_SERVICE_NAME"):
        fields["otel_service_name"] = get("OTEL_SERVICE_NAME")
    if exporter != "otlp":
        return fields
    for var in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = get(var)
        if protocol and protocol != "http/protobuf":
            raise SettingsError(f"{var}: only http/protobuf is supported, not {protocol!r}")
        if protocol:
            break
    if not endpoint:
        return {**fields, "otel_traces_endpoint": OTLP_HTTP_DEFAULT}
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{endpoint_var}: must look like http[s]://host:4318")
    return {**fields, "otel_traces_endpoint": endpoint}


def _check_lease(s: Settings) -> None:
    """A holder renews (and confirms) its leases every LEASE_RETRY_SECONDS and trusts a
    confirmation for half of LEASE_TTL_SECONDS: a renewal must fit in that half."""
    if s.lease_retry_seconds * 2 >= s.lease_ttl_seconds:
        raise SettingsError(
            f"LEASE_RETRY_SECONDS: must be under half of LEASE_TTL_SECONDS "
            f"({s.lease_retry_seconds:g} >= {s.lease_ttl_seconds:g} / 2)"
        )


def _check_redis_cluster(s: Settings) -> None:
    """REDIS_CLUSTER=true needs a URL a cluster client can start from."""
    if not s.redis_cluster:
        return
    try:
        redis_cluster_startup(s.redis_url.get_secret_value())
    except ValueError as e:
        raise SettingsError(f"REDIS_URL: with REDIS_CLUSTER=true, {e}") from None


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
