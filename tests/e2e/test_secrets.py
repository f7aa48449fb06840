"""Secrets never leak (CONTRACT §5): real processes, real servers, every byte of output read.

PostgreSQL here uses trust authentication, so a password in DATABASE_URL is
sent and ignored; Redis gets a real ACL user (created for the test with
``ACL SETUSER`` and deleted afterwards), so REDIS_URL's password is really used.
Every stdout and stderr of every process (the JSON logs go to stderr) is
searched for the passwords, raw and URL-encoded.
"""

from __future__ import annotations

import ast
import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from infrastructure.bootstrap import Bootstrap
from infrastructure.kafka.local_broker import LocalBroker
from infrastructure.redis.view import RedisSlotView
from infrastructure.settings import Settings, SettingsError, load_settings
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL, drop_redis_prefix, drop_schema
from tests.e2e.conftest import eventually, produce
from tests.support.scenario import content, registration

ROOT = Path(__file__).resolve().parents[2]
PG_PASSWORD = "pgPw-" + uuid.uuid4().hex  # trust auth: sent, ignored
REDIS_PASSWORD = "rdPw/" + uuid.uuid4().hex + "@:x"  # needs URL encoding
SASL_PASSWORD = "saslPw-" + uuid.uuid4().hex
SECRETS = (PG_PASSWORD, REDIS_PASSWORD, quote(REDIS_PASSWORD, safe=""), SASL_PASSWORD)


def with_password(url: str, user: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{quote(password, safe='')}@{rest.split('@')[-1]}"


@pytest.fixture
def redis_user() -> Iterator[str]:
    """A real Redis ACL user with a password; deleted afterwards."""
    name = f"secret-test-{uuid.uuid4().hex[:8]}"
    admin = redis.Redis.from_url(TEST_REDIS_URL)
    admin.execute_command("ACL", "SETUSER", name, "on", f">{REDIS_PASSWORD}", "~*", "&*", "+@all")
    try:
        yield name
    finally:
        admin.execute_command("ACL", "DELUSER", name)
        admin.close()


@pytest.fixture
def secret_env(broker: LocalBroker, redis_user: str) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:8]
    env = {
        "DATABASE_URL": with_password(TEST_DATABASE_URL, "postgres", PG_PASSWORD),
        "DATABASE_SCHEMA": f"t_{tag}",
        "REDIS_URL": with_password(TEST_REDIS_URL, redis_user, REDIS_PASSWORD),
        "REDIS_KEY_PREFIX": f"test:{tag}:",
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "KAFKA_CONSUMER_GROUP": f"g-{tag}",
        "TOPIC_BATCH_REGISTERED": f"reg-{tag}",
        "TOPIC_CONTENT_PROVISIONED": f"prov-{tag}",
        "TOPIC_VALIDATION_FAILED": f"fail-{tag}",
        "TOPIC_BATCH_EVENTS": f"events-{tag}",
        "TOPIC_DLQ": f"dlq-{tag}",
        "LOG_LEVEL": "DEBUG",
        "SWEEP_INTERVAL_SECONDS": "1",
    }
    # The password really is required by Redis: a wrong one is refused.
    wrong = with_password(TEST_REDIS_URL, redis_user, "wrong")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(wrong).ping()
    assert redis.Redis.from_url(env["REDIS_URL"]).ping()
    # The store is initialised as an operator would (the commands create nothing).
    initialised = batchctl(env, "init")
    assert initialised.returncode == 0, initialised.stderr
    assert_no_secret("init", initialised.stdout + initialised.stderr)
    yield env
    s = load_settings(env)
    drop_schema(s)
    drop_redis_prefix(s)


def process_env(extra: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
    # METRICS_PORT=0: `batchctl run` would take 9100; a free port, tests run side by side.
    return {**base, "PYTHONUNBUFFERED": "1", "TERM": "dumb", "METRICS_PORT": "0", **extra}


def batchctl(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infrastructure.cli.main", *args],
        env=process_env(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_no_secret(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a password appears in {where}"


def test_running_service_and_cli_never_print_a_password(
    secret_env: dict[str, str], tmp_path: Path
) -> None:
    settings = load_settings(secret_env)
    outputs: dict[str, str] = {}
    # Files, not pipes: DEBUG logs would fill a pipe nobody reads and block the process.
    out_path, err_path = tmp_path / "run.out", tmp_path / "run.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        service = subprocess.Popen(
            [sys.executable, "-m", "infrastructure.cli.main", "run", "--no-local-broker"],
            env=process_env(secret_env),
            cwd=ROOT,
            stdout=out,
            stderr=err,
        )
    try:
        messages = [registration("sec-b", ["e1", "e2"]), content("sec-b", "t1", "f1")]
        messages.append(content("sec-b", "t2", "f2"))
        store = Bootstrap(settings).batch_service()

        view = RedisSlotView.from_settings(settings)

        async def feed() -> None:
            await eventually(lambda: "worker started" in err_path.read_text(), timeout=60)
            await produce(settings, messages)
            await eventually(
                lambda: (b := store.get_batch("sec-b")) is not None and b.status == "completed",
                timeout=60,
            )
            # The projector has caught up with the store: `verify` must agree.
            head = store.recorder.max_notification_id()
            await eventually(lambda: (view.position() or 0) >= (head or 0), timeout=60)

        try:
            asyncio.run(feed())
        except AssertionError:
            raise AssertionError(err_path.read_text()[-3000:]) from None
        store.close()
        view.close()
        for args, code in (
            (("status", "sec-b"), 0),
            (("status", "sec-b", "--json"), 0),
            (("audit", "sec-b"), 0),
            (("replay", "--json"), 0),
            (("verify",), 0),
            (("verify", "--json"), 0),
            (("status", "no-such-batch"), 2),  # unknown batch: bad usage
        ):
            result = batchctl(secret_env, *args)
            outputs[" ".join(args)] = result.stdout + result.stderr
            assert result.returncode == code, (args, result.stderr[-500:])
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=60)
    stdout, stderr = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
    outputs["run (stdout)"], outputs["run (stderr, the logs)"] = stdout, stderr
    assert service.returncode == 0, stderr[-2000:]
    assert '"level": "DEBUG"' in stderr or '"level": "INFO"' in stderr  # logs were captured
    assert "service started" in stderr
    for where, text in outputs.items():
        assert_no_secret(where, text)


def test_unreachable_or_refusing_dependencies_fail_with_a_redacted_line(
    secret_env: dict[str, str], redis_user: str
) -> None:
    env = secret_env
    cases = {
        "postgres down": {**env, "DATABASE_URL": env["DATABASE_URL"].replace(":5432/", ":1/")},
        "redis down": {**env, "REDIS_URL": env["REDIS_URL"].replace(":6379/", ":1/")},
        "redis wrong password": {
            **env,
            "REDIS_URL": with_password(TEST_REDIS_URL, redis_user, SASL_PASSWORD),
        },
    }
    for name, case_env in cases.items():
        result = batchctl(case_env, "status", "some-batch")
        text = result.stdout + result.stderr
        assert result.returncode == 2, (name, text[-1000:])
        assert text.startswith("error: ") and text.count("\n") == 1, (name, text)
        assert "***" in text or "unreachable" in text, (name, text)
        assert_no_secret(name, text)
    kafka_down = {
        **env,
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": "svc",
        "KAFKA_SASL_PASSWORD": SASL_PASSWORD,
        "STARTUP_TIMEOUT_SECONDS": "2",
    }
    result = batchctl(kafka_down, "worker", timeout=120)
    assert result.returncode != 0
    assert_no_secret("worker with Kafka down", result.stdout + result.stderr)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", f"mysql://root:{PG_PASSWORD}@127.0.0.1/db"),
        ("DATABASE_URL", f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:5432"),
        ("DATABASE_URL", f"postgresql://postgres:{PG_PASSWORD}@:5432/db"),
        ("REDIS_URL", f"http://u:{PG_PASSWORD}@127.0.0.1:6379/0"),
        ("DATABASE_POOL_SIZE", "lots"),
        ("KAFKA_SECURITY_PROTOCOL", "SASL_MAGIC"),
    ],
)
def test_settings_errors_name_the_variable_and_hide_the_password(variable: str, value: str) -> None:
    env = {
        "DATABASE_URL": f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:5432/batchslot_test",
        "REDIS_URL": f"redis://u:{quote(REDIS_PASSWORD, safe='')}@127.0.0.1:6379/0",
        "KAFKA_SASL_PASSWORD": SASL_PASSWORD,
        variable: value,
    }
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert variable in str(caught.value)
    assert_no_secret("SettingsError", str(caught.value))
    for command in (("status", "x"), ("worker",)):
        result = batchctl(env, *command)
        text = result.stdout + result.stderr
        assert result.returncode == 2, text[-1000:]
        assert variable in text and "Traceback" not in text
        assert_no_secret(f"batchctl {command[0]} with bad {variable}", text)


def test_settings_repr_and_redacted_hide_every_password() -> None:
    env = {
        "DATABASE_URL": f"postgresql://postgres:{PG_PASSWORD}@db.example:5432/batchslot",
        "REDIS_URL": f"rediss://svc:{quote(REDIS_PASSWORD, safe='')}@cache.example:6380/0",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "svc",
        "KAFKA_SASL_PASSWORD": SASL_PASSWORD,
    }
    s: Settings = load_settings(env)
    redacted = s.redacted()
    for text in (repr(s), str(s), s.model_dump_json(), repr(redacted), str(s.model_dump())):
        assert_no_secret("settings", text)
    assert redacted["database_url"] == "postgresql://postgres:***@db.example:5432/batchslot"
    assert redacted["redis_url"] == "rediss://svc:***@cache.example:6380/0"
    assert "kafka_sasl_password" not in redacted
    assert s.database_url.get_secret_value() == env["DATABASE_URL"]  # still usable


# ---------------------------------------------------------------- SQL only by parameters

SQL_WORDS = (
    "SELECT ",
    "INSERT ",
    "UPDATE ",
    "DELETE ",
    "CREATE ",
    "DROP ",
    "ALTER ",
    "TRUNCATE ",
    "LISTEN ",
    "NOTIFY ",
    "GRANT ",
    "SET ",
)
PACKAGES = ("domain", "application", "infrastructure", "projections", "scripts")


def sql_built_from_strings(source: str) -> list[int]:
    """Lines where SQL text is built by f-string, ``%`` or ``.format`` on a plain str.

    ``psycopg.sql.SQL(...).format(sql.Identifier(...))`` is allowed: the call
    target is ``SQL(...)``, not a string literal.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        text, line = None, getattr(node, "lineno", 0)
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            if isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
                text = node.left.value
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "format"
            and isinstance(node.func.value, ast.Constant)
            and isinstance(node.func.value.value, str)
        ):
            text = node.func.value.value
        if text and any(w in text.upper() for w in SQL_WORDS) and _looks_like_sql(text):
            found.append(line)
    return found


def _looks_like_sql(text: str) -> bool:
    upper = " ".join(text.upper().split())
    return any(
        f"{a} {b}" in upper or upper.startswith(a)
        for a, b in (
            ("SELECT", "FROM"),
            ("INSERT", "INTO"),
            ("DELETE", "FROM"),
            ("UPDATE", "SET"),
            ("CREATE", "TABLE"),
            ("CREATE", "SCHEMA"),
            ("DROP", "TABLE"),
            ("DROP", "SCHEMA"),
            ("ALTER", "TABLE"),
            ("TRUNCATE", ""),
            ("LISTEN", ""),
        )
        if b
    ) or upper.startswith(("TRUNCATE ", "LISTEN ", "NOTIFY ", "SELECT ", "SET "))


def test_the_detector_finds_string_built_sql() -> None:
    bad = (
        "cur.execute(f'SELECT * FROM t WHERE id = {x}')\n"
        "cur.execute('DELETE FROM t WHERE id = %s' % x)\n"
        "cur.execute('DROP SCHEMA {} CASCADE'.format(name))\n"
    )
    good = (
        "cur.execute('SELECT * FROM t WHERE id = %s', (x,))\n"
        "conn.execute(sql.SQL('CREATE SCHEMA IF NOT EXISTS {}').format(sql.Identifier(s)))\n"
        "log.info(f'selected {n} rows from the store')\n"
    )
    assert sql_built_from_strings(bad) == [1, 2, 3]
    assert sql_built_from_strings(good) == []


def test_sql_is_only_built_with_parameters_or_psycopg_sql() -> None:
    offenders = []
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 20
    for path in files:
        for line in sql_built_from_strings(path.read_text()):
            offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert offenders == [], offenders
