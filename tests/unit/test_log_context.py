"""Log lines written while a message is handled carry its ids."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

from infrastructure.logcontext import message_context, record_ids
from infrastructure.logs import JsonFormatter


def line(**extra: object) -> dict[str, object]:
    record = logging.makeLogRecord({"msg": "m", "levelname": "WARNING", **extra})
    return dict(json.loads(JsonFormatter().format(record)))


def test_lines_inside_a_message_context_carry_its_ids_at_every_level() -> None:
    assert "correlation_id" not in line() and "batch_id" not in line()
    with message_context("c-1", "b-1"):
        for level in ("DEBUG", "INFO", "WARNING", "ERROR"):
            entry = line(levelname=level)
            assert entry["correlation_id"] == "c-1" and entry["batch_id"] == "b-1"
        with message_context("c-2", None):  # nested: what is set wins, the rest stays
            assert line()["correlation_id"] == "c-2" and line()["batch_id"] == "b-1"
        assert line(correlation_id="own")["correlation_id"] == "own"  # extra= wins
    assert "correlation_id" not in line() and "batch_id" not in line()


def test_ids_of_a_raw_record_best_effort() -> None:
    value = json.dumps({"correlation_id": "c", "data": {"batch_id": "b"}}).encode()
    assert record_ids(SimpleNamespace(value=value, key=b"k")) == ("c", "b")
    assert record_ids(SimpleNamespace(value=b"\xff not json", key=b"b-key")) == (None, "b-key")
    assert record_ids(SimpleNamespace(value=None, key=None)) == (None, None)
    deep = b"[" * 100_000 + b"]" * 100_000  # json.loads raises RecursionError
    assert record_ids(SimpleNamespace(value=deep, key=b"b")) == (None, "b")
