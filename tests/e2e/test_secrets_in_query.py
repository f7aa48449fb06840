"""Passwords in a URL's query string never leak.

redis-py takes ``?password=`` (its form for unix sockets, also accepted for
TCP) and libpq takes ``?password=`` and ``?sslpassword=``. Real processes,
real servers: the Redis password is a real ACL user's (a wrong one is
refused), and every byte of output of the running service and of the CLI is
searched for the passwords, raw and URL-encoded.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from infrastructure.bootstrap import Bootstrap
from infrastructure.kafka.local_broker import LocalBroker
from infrastructure.settings import load_settings, redact_url
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL, drop_redis_prefix, drop_schema
from tests.e2e.conftest import eventually, produce
from tests.e2e.test_secrets import (
    PG_PASSWORD,
    REDIS_PASSWORD,
    ROOT,
    SASL_PASSWORD,
    assert_no_secret,
    batchctl,
    process_env,
    redis_user,  # noqa: F401 - a fixture
)
from tests.support.scenario import content, registration
from tests.support.scratch import new_tag, topic_env


def pg_url(base: str = TEST_DATABASE_URL) -> str:
    return f"{base}?sslmode=prefer&password={quote(PG_PASSWORD, safe='')}"


def redis_url(user: str, base: str = TEST_REDIS_URL) -> str:
    return f"{base}?username={user}&password={quote(REDIS_PASSWORD, safe='')}"


@pytest.fixture
def query_env(broker: LocalBroker, redis_user: str) -> Iterator[dict[str, str]]:  # noqa: F811
    tag = new_tag(8)
    env = {
        "DATABASE_URL": pg_url(),
        "DATABASE_SCHEMA": f"t_{tag}",
        "REDIS_URL": redis_url(redis_user),
        "REDIS_KEY_PREFIX": f"test:{tag}:",
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        **topic_env(tag),
        "LOG_LEVEL": "DEBUG",
    }
    # The store is initialised as an operator would (the commands create nothing).
    initialised = batchctl(env, "init")
    assert initialised.returncode == 0, initialised.stderr
    # The query-string password really is what Redis gets: a wrong one is refused.
    wrong = f"{TEST_REDIS_URL}?username={redis_user}&password=wrong"
    result = batchctl({**env, "REDIS_URL": wrong}, "status", "x")
    assert result.returncode == 2 and "credentials" in result.stderr, result.stderr
    yield env
    s = load_settings(env)
    drop_schema(s)
    drop_redis_prefix(s)


def test_redact_url_hides_every_password_form() -> None:
    cases = {
        f"unix:///run/redis.sock?db=0&password={quote(REDIS_PASSWORD, safe='')}": (
            "unix:///run/redis.sock?db=0&password=***"
        ),
        f"redis://h:6379/0?username=u&password={PG_PASSWORD}": (
            "redis://h:6379/0?username=u&password=***"
        ),
        f"postgresql://u@h:5432/db?sslmode=require&sslpassword={SASL_PASSWORD}": (
            "postgresql://u@h:5432/db?sslmode=require&sslpassword=***"
        ),
        f"postgresql://u:{PG_PASSWORD}@h/db?password={PG_PASSWORD}": (
            "postgresql://u:***@h/db?password=***"
        ),
    }
    for url, redacted in cases.items():
        assert redact_url(url) == redacted
    s = load_settings({"DATABASE_URL": pg_url(), "REDIS_URL": redis_url("u")})
    for text in (repr(s), str(s.redacted()), s.model_dump_json()):
        assert_no_secret("settings", text)
    assert {PG_PASSWORD, REDIS_PASSWORD, quote(REDIS_PASSWORD, safe="")} <= set(s.secrets())


@pytest.mark.timeout(300)
def test_a_running_service_and_the_cli_never_print_a_query_string_password(
    query_env: dict[str, str], tmp_path: Path
) -> None:
    settings = load_settings(query_env)
    out_path, err_path = tmp_path / "run.out", tmp_path / "run.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        service = subprocess.Popen(
            [sys.executable, "-m", "infrastructure.cli.main", "run", "--no-local-broker"],
            env=process_env(query_env),
            cwd=ROOT,
            stdout=out,
            stderr=err,
        )
    outputs: dict[str, str] = {}
    try:
        store = Bootstrap(settings).batch_service()

        async def feed() -> None:
            await eventually(lambda: "worker started" in err_path.read_text(), timeout=60)
            await produce(settings, [registration("q-b", ["e1"]), content("q-b", "t1", "f1")])
            await eventually(
                lambda: (b := store.get_batch("q-b")) is not None and b.status == "completed",
                timeout=60,
            )

        try:
            asyncio.run(feed())
        except AssertionError:
            raise AssertionError(err_path.read_text()[-3000:]) from None
        store.close()
        time.sleep(1.0)  # the projector writes the read model the CLI reads below
        for args in (("status", "q-b"), ("status", "q-b", "--json"), ("verify",)):
            result = batchctl(query_env, *args)
            outputs[" ".join(args)] = result.stdout + result.stderr
            assert result.returncode in (0, 1), (args, result.stderr[-500:])
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=60)
    stderr = err_path.read_text(errors="replace")
    outputs["run (stdout)"] = out_path.read_text(errors="replace")
    outputs["run (stderr, the logs)"] = stderr
    assert service.returncode == 0, stderr[-2000:]
    assert "service started" in stderr and "password=***" in stderr
    for where, text in outputs.items():
        assert_no_secret(where, text)


def test_unreachable_dependencies_with_query_string_passwords_fail_with_a_redacted_line(
    query_env: dict[str, str],
) -> None:
    env = query_env
    cases = {
        "postgres down": {
            **env,
            "DATABASE_URL": pg_url(TEST_DATABASE_URL.replace(":5432/", ":1/")),
        },
        "redis down": {**env, "REDIS_URL": env["REDIS_URL"].replace(":6379/", ":1/")},
        "redis unix socket missing": {
            **env,
            "REDIS_URL": f"unix:///nonexistent/redis.sock?db=0&password={quote(REDIS_PASSWORD)}",
        },
        "redis wrong password": {
            **env,
            "REDIS_URL": f"{TEST_REDIS_URL}?username=nobody&password={SASL_PASSWORD}",
        },
    }
    for name, case_env in cases.items():
        result = batchctl(case_env, "status", "some-batch")
        text = result.stdout + result.stderr
        assert result.returncode == 2, (name, text[-1000:])
        assert text.startswith("error: ") and text.count("\n") == 1, (name, text)
        assert "password=***" in text, (name, text)
        assert_no_secret(name, text)
