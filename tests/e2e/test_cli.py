"""batchctl as an operator runs it: a subprocess against real PostgreSQL and Redis.

Each test has its own schema and Redis key prefix (tests.conftest); the CLI
gets them through the environment, exactly as in production.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from application.commands import (
    ProvisionContent,
    RecordValidationFailure,
    RegisterBatch,
)
from application.service import BatchService
from domain import Batch
from infrastructure.bootstrap import Bootstrap
from infrastructure.postgres.store import conninfo
from infrastructure.redis.client import connect
from infrastructure.settings import Settings
from tests.conftest import drop_redis_prefix, drop_schema, make_settings
from tests.support.followers import rebuilt

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("init", "status", "audit", "replay", "export", "import", "rebuild", "verify")
EVENT_KEYS = [
    "position", "batch_id", "version", "event_type", "timestamp", "correlation_id", "data"
]


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
    env.update(
        DATABASE_URL=settings.database_url.get_secret_value(),
        DATABASE_SCHEMA=settings.database_schema,
        REDIS_URL=settings.redis_url.get_secret_value(),
        REDIS_KEY_PREFIX=settings.redis_key_prefix,
        COLUMNS="200",
    )
    env.update(extra)
    return env


def batchctl(
    settings: Settings, *args: str, stdin: str | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infrastructure.cli.main", *args],
        cwd=ROOT,
        env=env_of(settings, **extra),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def batchctl_many(
    settings: Settings, *commands: list[str]
) -> list[subprocess.CompletedProcess[str]]:
    """Run independent invocations side by side (each is a fresh interpreter)."""
    procs = [
        (args, subprocess.Popen(
            [sys.executable, "-m", "infrastructure.cli.main", *args], cwd=ROOT,
            env=env_of(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
        for args in commands
    ]
    results = []
    for args, proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return results


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def seed(service: BatchService) -> None:
    """b1: pended, registered (3 slots), assigned, failed, completed, excess; b2: open."""
    service.provision_content(ProvisionContent(
        batch_id="b1", correlation_id="c-early", text_storage_id="t0", file_upload_id="f0",
        original_file_name="[bold]early.txt",
    ))
    service.register(
        RegisterBatch(batch_id="b1", correlation_id="c-reg", essay_ids=["e1", "e2", "e3"])
    )
    service.provision_content(ProvisionContent(
        batch_id="b1", correlation_id="c-t1", text_storage_id="t1", file_upload_id="f1",
        original_file_name="a.txt",
    ))
    service.record_validation_failure(RecordValidationFailure(
        batch_id="b1", correlation_id="c-fail", file_upload_id="f9",
        original_file_name="bad.txt", error_code="EMPTY_FILE",
    ))
    service.provision_content(ProvisionContent(
        batch_id="b1", correlation_id="c-late", text_storage_id="t5", file_upload_id="f5",
        original_file_name="late.txt",
    ))
    service.register(RegisterBatch(batch_id="b2", correlation_id="c-b2", essay_ids=["x1", "x2"]))


B1_TYPES = [
    "ContentPended", "BatchRegistered", "SlotAssigned", "SlotAssigned",
    "ValidationFailureRecorded", "BatchCompleted", "ExcessContentProvisioned",
]


@pytest.fixture
def seeded(test_settings: Settings, service: BatchService) -> Settings:
    seed(service)
    rebuilt(test_settings)  # the read model, as a projector would have written it
    return test_settings


@pytest.fixture
def other_settings() -> Iterator[Settings]:
    """A second, initialised store (``batchctl init``'s work) to import into."""
    s = make_settings()
    with Bootstrap(s) as built:
        built.create_store()
    yield s
    drop_schema(s)
    drop_redis_prefix(s)


# ------------------------------------------------------------------ usage


def test_every_command_has_help_with_examples(test_settings: Settings) -> None:
    top, *each = batchctl_many(test_settings, ["--help"], *([c, "--help"] for c in COMMANDS))
    assert top.returncode == 0 and all(c in top.stdout for c in COMMANDS)
    for result in each:
        assert result.returncode == 0, result
        assert "Usage: batchctl" in result.stdout and "Examples" in result.stdout


BAD_ARGUMENTS = {
    "--from-position": ["replay", "--from-position", "0"],
    "--to-position": ["replay", "--from-position", "9", "--to-position", "3"],
    "SlotAssigned": ["replay", "--event-type", "Nope"],
    "BATCH_ID": ["audit"],
    "--bogus": ["verify", "--bogus"],
    "frobnicate": ["frobnicate"],
}


def test_bad_arguments_exit_2_with_one_line(test_settings: Settings) -> None:
    results = batchctl_many(test_settings, *BAD_ARGUMENTS.values())
    for needle, result in zip(BAD_ARGUMENTS, results, strict=True):
        assert needle in one_line_error(result)


def test_unreachable_postgres_is_one_line_naming_database_url(test_settings: Settings) -> None:
    url = "postgresql://ops:s3cret-pw@127.0.0.1:1/batchslot_test"
    line = one_line_error(batchctl(test_settings, "audit", "b1", DATABASE_URL=url))
    assert "DATABASE_URL" in line and "PostgreSQL" in line
    assert "s3cret-pw" not in line


@pytest.mark.parametrize(
    "url", ["redis://:hidden-pw@127.0.0.1:1/0", "redis+cluster://:hidden-pw@127.0.0.1:1/0"]
)
def test_unreachable_redis_is_one_line_naming_redis_url(seeded: Settings, url: str) -> None:
    line = one_line_error(batchctl(seeded, "status", "b1", REDIS_URL=url))
    assert "REDIS_URL" in line and "Redis" in line
    assert "hidden-pw" not in line


def test_invalid_setting_names_the_variable(test_settings: Settings) -> None:
    line = one_line_error(batchctl(test_settings, "verify", DATABASE_URL="mysql://x/y"))
    assert "DATABASE_URL" in line


@pytest.mark.parametrize("value", ["0", "-5", "10001", "ten"])
def test_invalid_fetch_wait_exits_2(test_settings: Settings, value: str) -> None:
    for command in ("worker", "run", "dlq list"):
        line = one_line_error(
            batchctl(test_settings, *command.split(), KAFKA_FETCH_MAX_WAIT_MS=value)
        )
        assert "invalid configuration: KAFKA_FETCH_MAX_WAIT_MS: " in line, (command, line)


def test_console_script_is_installed(test_settings: Settings) -> None:
    script = Path(sys.executable).parent / "batchctl"
    if not script.exists():
        pytest.skip("batchctl script not installed (pip install -e .)")
    result = subprocess.run(
        [str(script), "--help"], env=env_of(test_settings), capture_output=True, text=True
    )
    assert result.returncode == 0 and "replay" in result.stdout


# ----------------------------------------------------------- status / audit


def test_audit_shows_the_history_and_agreement(seeded: Settings) -> None:
    result = batchctl(seeded, "audit", "b1")
    assert result.returncode == 0, result.stderr
    for event_type in set(B1_TYPES):
        assert event_type in result.stdout
    assert "[bold]early.txt" in result.stdout  # user data is shown, never taken as markup
    assert "c-fail" in result.stdout
    assert "agrees" in result.stdout


def test_audit_json_shape(seeded: Settings) -> None:
    result = batchctl(seeded, "audit", "b1", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert list(doc) == ["batch_id", "event_store", "read_model", "agrees", "differences", "events"]
    assert doc["agrees"] is True and doc["differences"] == []
    assert [e["event_type"] for e in doc["events"]] == B1_TYPES
    assert [e["version"] for e in doc["events"]] == list(range(1, 8))
    assert all(list(e) == EVENT_KEYS for e in doc["events"])
    assigned = doc["events"][2]
    assert assigned["correlation_id"] == "c-reg"
    assert assigned["data"]["essay_id"] == "e1" and assigned["data"]["text_storage_id"] == "t0"
    summary = doc["event_store"]["summary"]
    assert summary == {
        "status": "completed", "expected": "3", "assigned": "2", "available": "1",
        "pending": "0", "failed": "1", "excess": "1", "version": "7",
    }
    assert doc["event_store"]["available_slots"] == ["e3"]
    assert doc["event_store"]["assignments"] == {"e1": "t0", "e2": "t1"}
    assert doc["read_model"] == doc["event_store"]


def test_status_table_and_json(seeded: Settings) -> None:
    table = batchctl(seeded, "status", "b2")
    assert table.returncode == 0, table.stderr
    assert "open" in table.stdout and "agrees" in table.stdout
    doc = json.loads(batchctl(seeded, "status", "b2", "--json").stdout)
    assert doc["agrees"] is True
    assert doc["event_store"]["summary"]["status"] == "open"
    assert doc["event_store"]["available_slots"] == ["x1", "x2"]


def test_unknown_batch_exits_2(seeded: Settings) -> None:
    for command in ("audit", "status"):
        line = one_line_error(batchctl(seeded, command, "no-such-batch"))
        assert "unknown batch 'no-such-batch'" in line


# ------------------------------------------------------------------ replay


def test_replay_streams_json_lines_in_global_order(seeded: Settings) -> None:
    result = batchctl(seeded, "replay", "--json")
    assert result.returncode == 0, result.stderr
    events = json_lines(result.stdout)
    assert [e["position"] for e in events] == list(range(1, 9))
    assert all(list(e) == EVENT_KEYS for e in events)
    assert events[-1]["batch_id"] == "b2" and events[-1]["event_type"] == "BatchRegistered"
    assert events[-1]["data"]["essay_ids"] == ["x1", "x2"]


def test_replay_filters(seeded: Settings) -> None:
    window = json_lines(batchctl(seeded, "replay", "--json", "--from-position", "3",
                                 "--to-position", "5").stdout)
    assert [e["position"] for e in window] == [3, 4, 5]
    b2 = json_lines(batchctl(seeded, "replay", "--json", "--batch", "b2").stdout)
    assert [(e["batch_id"], e["version"]) for e in b2] == [("b2", 1)]
    slots = json_lines(batchctl(seeded, "replay", "--json", "--event-type", "SlotAssigned").stdout)
    assert [e["data"]["essay_id"] for e in slots] == ["e1", "e2"]
    table = batchctl(seeded, "replay", "--batch", "b1")
    assert table.returncode == 0 and table.stdout.count("SlotAssigned") == 2
    empty = batchctl(seeded, "replay", "--from-position", "100")
    assert empty.returncode == 0 and "No stored events" in empty.stdout


def test_replay_pages_through_a_large_store(test_settings: Settings, service: BatchService) -> None:
    slots = [f"e{i}" for i in range(1200)]
    commands: list[Any] = [RegisterBatch(batch_id="big", correlation_id="c", essay_ids=slots)]
    commands += [
        ProvisionContent(batch_id="big", correlation_id="c", text_storage_id=f"t{i}",
                         file_upload_id=f"f{i}", original_file_name=f"{i}.txt")
        for i in range(1100)
    ]
    service.execute(commands)
    events = json_lines(batchctl(test_settings, "replay", "--json").stdout)
    assert [e["position"] for e in events] == list(range(1, 1102))
    tail = json_lines(batchctl(test_settings, "replay", "--json", "--from-position", "999").stdout)
    assert [e["version"] for e in tail] == list(range(999, 1102))


# ----------------------------------------------------------- export / import


def test_export_import_round_trip(
    seeded: Settings, other_settings: Settings, tmp_path: Path
) -> None:
    dump = tmp_path / "events.jsonl"
    exported = batchctl(seeded, "export", "--output", str(dump))
    assert exported.returncode == 0, exported.stderr
    lines = dump.read_text().splitlines()
    header, first = json.loads(lines[0]), json.loads(lines[1])
    assert header["format"] == "batchslot-events" and header["version"] == 1
    assert header["max_position"] == 8 and len(lines) == 9
    assert list(first) == ["position", "originator_id", "originator_version", "topic", "state"]
    assert first["topic"] == "domain.batch:Batch.ContentPended"

    imported = batchctl(other_settings, "import", str(dump), "--json")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout) == {"imported": 8, "skipped": 0, "batches": 2}

    again = one_line_error(batchctl(other_settings, "import", str(dump)))
    assert "--resume" in again
    resumed = batchctl(other_settings, "import", str(dump), "--resume", "--json")
    assert json.loads(resumed.stdout) == {"imported": 0, "skipped": 8, "batches": 2}

    # The same batches, byte for byte: re-exporting gives the same events.
    assert batchctl(other_settings, "export").stdout.splitlines()[1:] == lines[1:]
    for batch_id in ("b1", "b2"):
        here = json.loads(batchctl(seeded, "status", batch_id, "--json").stdout)
        assert batchctl(other_settings, "rebuild").returncode == 0
        there = json.loads(batchctl(other_settings, "status", batch_id, "--json").stdout)
        assert there["event_store"] == here["event_store"] and there["agrees"]
    assert batchctl(other_settings, "verify").returncode == 0


def test_import_from_stdin(seeded: Settings, other_settings: Settings) -> None:
    dump = batchctl(seeded, "export").stdout
    result = batchctl(other_settings, "import", "-", stdin=dump)
    assert result.returncode == 0, result.stderr
    assert "Imported 8 events" in result.stderr


def test_import_checks_the_whole_file_before_writing(
    seeded: Settings, other_settings: Settings, tmp_path: Path
) -> None:
    lines = batchctl(seeded, "export").stdout.splitlines()
    forged = json.loads(lines[-1])
    forged["state"]["batch_id"] = "someone-else"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([*lines[:-1], json.dumps(forged)]) + "\n")
    line = one_line_error(batchctl(other_settings, "import", str(bad)))
    assert f"line {len(lines)}" in line and "someone-else" in line
    assert batchctl(other_settings, "replay", "--json").stdout == ""  # nothing written

    not_export = tmp_path / "x.jsonl"
    not_export.write_text('{"hello": 1}\n')
    assert "not a batchctl export" in one_line_error(
        batchctl(other_settings, "import", str(not_export))
    )
    assert "No such file" in one_line_error(batchctl(other_settings, "import", "/nonexistent"))


# ---------------------------------------------------------- verify / rebuild


@pytest.fixture
def seeded_either(read_model_settings: Settings) -> Settings:
    """``seeded``, once on the single Redis and once on the Redis Cluster."""
    with Bootstrap(read_model_settings) as built:
        seed(built.service)
    rebuilt(read_model_settings)
    return read_model_settings


def test_verify_catches_a_corrupted_read_model_and_rebuild_repairs_it(
    seeded_either: Settings,
) -> None:
    seeded = seeded_either
    ok = batchctl(seeded, "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "agrees" in ok.stdout

    client = connect(seeded)  # on a cluster, each batch's keys live on their own node
    p = seeded.redis_key_prefix
    client.hset(f"{p}batch:{{b1}}:summary", "assigned", "99")
    client.srem(f"{p}batch:{{b2}}:available_slots", "x2")
    client.hset(f"{p}batch:{{ghost}}:summary", mapping={"status": "open", "version": "1"})
    client.close()

    found = batchctl(seeded, "verify")
    assert found.returncode == 1, found.stdout + found.stderr
    assert "batch b1: summary.assigned: event store '2', read model '99'" in found.stdout
    assert "available_slots:x2" in found.stdout and "batch ghost" in found.stdout

    doc = json.loads(batchctl(seeded, "verify", "--json").stdout)
    assert doc["agrees"] is False and doc["batches"] == 2 and doc["events"] == 8
    assert doc["read_model_only"] == 1 and doc["batches_differing"] == 3
    assert {"batch_id": "b1", "key": "summary.assigned", "event_store": "2",
            "read_model": "99"} in doc["differences"]

    rebuilt = batchctl(seeded, "rebuild", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads(rebuilt.stdout)["events"] == 8
    after = batchctl(seeded, "verify", "--json")
    assert after.returncode == 0, after.stdout
    assert json.loads(after.stdout)["agrees"] is True


def test_verify_reports_a_batch_missing_from_the_read_model(seeded: Settings) -> None:
    drop_redis_prefix(seeded)
    result = batchctl(seeded, "verify")
    assert result.returncode == 1
    assert "batch b1: batch: event store 'present', read model absent" in result.stdout
    assert "Traceback" not in result.stderr


def test_rebuild_prints_a_summary(seeded: Settings) -> None:
    result = batchctl(seeded, "rebuild")
    assert result.returncode == 0, result.stderr
    assert "8 events, 2 batches" in result.stdout
    assert result.stderr == ""  # no progress bar when stderr is not a terminal


def test_verify_reports_a_stream_with_a_missing_event(seeded: Settings) -> None:
    with psycopg.connect(**conninfo(seeded), autocommit=True) as conn:
        conn.execute(
            f'DELETE FROM "{seeded.database_schema}".batchservice_events '
            "WHERE originator_id = %s AND originator_version = 3",
            [Batch.create_id("b1")],
        )
    result = batchctl(seeded, "verify")
    assert result.returncode == 1
    assert "batch b1: stream: event store 'broken stream" in result.stdout
