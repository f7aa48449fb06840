"""Durations and points in time as an operator types them: ``90s``, ``15m``, ``2h``, ``1d``,
``1h30m``, plain seconds, or an RFC 3339 / ISO 8601 time."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import typer

_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")
_DURATION_HELP = "a duration such as 90s, 15m, 2h, 1d or 1h30m"


def parse_duration(text: str, option: str) -> timedelta:
    """``2h`` -> 2 hours; a bare number is seconds. Raises typer.BadParameter."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return timedelta(seconds=float(value))
    parts = _PART.findall(value)
    if not value or "".join(n + u for n, u in parts) != value:
        raise typer.BadParameter(f"{text!r} is not {_DURATION_HELP}", param_hint=option)
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))


def parse_since(text: str, option: str, now: datetime) -> datetime:
    """A duration ago (``2h``) or a time (``2026-01-01T12:00:00Z``; naive means UTC)."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        try:
            return now - parse_duration(text, option)
        except typer.BadParameter:
            raise typer.BadParameter(
                f"{text!r} is neither {_DURATION_HELP} nor a time like 2026-01-01T12:00:00Z",
                param_hint=option,
            ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
