"""The event-store library's own variables in the environment change nothing.

The ``eventsourcing`` library reads ``POSTGRES_*``, ``PERSISTENCE_MODULE``,
``CREATE_TABLE`` and ``BATCHSERVICE_*`` (preferred to the unprefixed names)
from ``os.environ``. One of them, ``POSTGRES_ENABLE_DB_FUNCTIONS``, switches
to an insert path without the table lock. The service must take its
configuration only from its documented variables.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from infrastructure.bootstrap import Bootstrap
from infrastructure.settings import Settings
from tests.e2e.conftest import eventually, produce
from tests.e2e.test_secrets import process_env
from tests.support.scenario import content, registration

ROOT = Path(__file__).resolve().parents[2]
AMBIENT = {
    "POSTGRES_ENABLE_DB_FUNCTIONS": "y",
    "BATCHSERVICE_POSTGRES_ENABLE_DB_FUNCTIONS": "y",
    "PERSISTENCE_MODULE": "no_such_persistence_module",
    "BATCHSERVICE_PERSISTENCE_MODULE": "no_such_persistence_module",
    "POSTGRES_HOST": "no-such-host.invalid",
    "BATCHSERVICE_POSTGRES_HOST": "no-such-host.invalid",
    "BATCHSERVICE_POSTGRES_DBNAME": "no_such_database",
    "BATCHSERVICE_POSTGRES_SCHEMA": "no_such_schema",
    "BATCHSERVICE_CREATE_TABLE": "n",
    "BATCHSERVICE_APPLICATION_RECORDER_TOPIC": "no_such_module:Recorder",
}


def env_of(s: Settings) -> dict[str, str]:
    return {
        "DATABASE_URL": s.database_url.get_secret_value(),
        "DATABASE_SCHEMA": s.database_schema,
        "REDIS_URL": s.redis_url.get_secret_value(),
        "REDIS_KEY_PREFIX": s.redis_key_prefix,
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "KAFKA_CONSUMER_GROUP": s.kafka_consumer_group,
        "TOPIC_BATCH_REGISTERED": s.topics.registered,
        "TOPIC_CONTENT_PROVISIONED": s.topics.provisioned,
        "TOPIC_VALIDATION_FAILED": s.topics.failed,
        "TOPIC_BATCH_EVENTS": s.topics.events,
        "TOPIC_DLQ": s.topics.dlq,
    }


def test_the_service_ignores_the_librarys_variables_in_its_environment(
    test_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in AMBIENT.items():
        monkeypatch.setenv(name, value)
    service = Bootstrap(test_settings).batch_service()
    try:
        datastore = service.recorder.datastore  # type: ignore[attr-defined]
        assert datastore.enable_db_functions is False  # the insert path with the table lock
        assert datastore.schema == test_settings.database_schema
        assert type(service.recorder).__name__ == "UnpipelinedApplicationRecorder"
        [result] = service.execute([_register("amb-1")])
        assert result.outcome == "recorded"
    finally:
        service.close()


def _register(batch_id: str):  # type: ignore[no-untyped-def]
    from application.commands import RegisterBatch

    return RegisterBatch(batch_id=batch_id, correlation_id="c", essay_ids=["e1"])


@pytest.mark.timeout(240)
def test_a_worker_process_with_the_librarys_variables_set_still_uses_its_configured_store(
    e2e_settings: Settings, tmp_path: Path
) -> None:
    err_path = tmp_path / "worker.err"
    with err_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "infrastructure.cli.main", "worker"],
            env=process_env({**AMBIENT, **env_of(e2e_settings)}),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    store = Bootstrap(e2e_settings).batch_service()
    try:

        async def scenario() -> None:
            await eventually(
                lambda: "worker started" in err_path.read_text() or process.poll() is not None,
                timeout=90,
            )
            assert process.poll() is None, err_path.read_text()[-3000:]
            await produce(e2e_settings, [registration("amb-2", ["e1"]), content("amb-2", "t", "f")])
            await eventually(
                lambda: (b := store.get_batch("amb-2")) is not None and b.status == "completed",
                timeout=90,
            )

        asyncio.run(scenario())
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        store.close()
    assert process.returncode == 0, err_path.read_text()[-3000:]


def test_postgres_enable_db_functions_alone_does_not_switch_the_insert_path(
    test_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTGRES_ENABLE_DB_FUNCTIONS", "y")
    service = Bootstrap(test_settings).batch_service()
    try:
        assert service.recorder.datastore.enable_db_functions is False  # type: ignore[attr-defined]
    finally:
        service.close()
