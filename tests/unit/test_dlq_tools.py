"""The pure parts of the dead-letter tools: durations, letters, redrive headers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
import typer

from infrastructure.cli.durations import parse_duration, parse_since
from infrastructure.kafka.dlq_admin import Letter

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        ("1w", 604800),
        ("0.5h", 1800),
        (" 2H ", 7200),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "--older-than") == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5x", "h", "2h-1m", "-5m", "1h 30m", "yesterday"])
def test_bad_durations_name_the_option(text: str) -> None:
    with pytest.raises(typer.BadParameter) as caught:
        parse_duration(text, "--older-than")
    assert caught.value.param_hint == "--older-than"


def test_since_is_a_time_or_a_duration_ago() -> None:
    assert parse_since("2h", "--since", NOW) == NOW - timedelta(hours=2)
    assert parse_since("2025-12-31T23:00:00Z", "--since", NOW) == datetime(
        2025, 12, 31, 23, tzinfo=UTC
    )
    assert parse_since("2025-12-31T23:00:00", "--since", NOW).tzinfo == UTC  # naive = UTC
    with pytest.raises(typer.BadParameter, match="neither"):
        parse_since("last week", "--since", NOW)


def record(
    value: bytes | None, key: bytes | None = b"k", headers: list[tuple[str, bytes]] | None = None
) -> Letter:
    return Letter.of(
        SimpleNamespace(
            topic="dlq",
            partition=2,
            offset=41,
            timestamp=1767268800000,
            key=key,
            value=value,
            headers=headers or [],
        )
    )


def test_redrive_headers_keep_the_originals_and_replace_every_dlq_header() -> None:
    letter = record(
        b"{}",
        headers=[
            ("traceparent", b"00-abc-01"),
            ("dlq.redriven.from", b"dlq/0/3"),  # an earlier redrive that failed again
            ("case", b"x"),
            ("dlq.reason", b"PROCESSING_ERROR"),
            ("dlq.source.topic", b"prov"),
        ],
    )
    assert letter.redriven_from == "dlq/0/3" and letter.source_topic == "prov"
    assert letter.redrive_headers() == [
        ("traceparent", b"00-abc-01"),
        ("case", b"x"),
        ("dlq.redriven.from", b"dlq/2/41"),
    ]
    assert letter.timestamp == datetime(2026, 1, 1, 12, tzinfo=UTC)


def test_batch_id_from_the_envelope_else_the_key() -> None:
    value = json.dumps({"data": {"batch_id": "b-42"}}).encode()
    assert record(value, key=b"other").batch_id == "b-42"
    assert record(b"\xff not json", key=b"b-7").batch_id == "b-7"
    assert record(b"[1]", key=None).batch_id is None
    assert record(None, key=None).envelope is None
    assert record(b'{"data": {"batch_id": 5}}', key=b"k5").batch_id == "k5"
