"""Structured logs: one JSON object per line, with the correlation id when there is one.

While the worker handles a message, every line carries its ``correlation_id`` and
``batch_id`` (``infrastructure/logcontext.py``).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from infrastructure import logcontext

_STANDARD = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; every known secret (in every form) replaced by ***."""

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        super().__init__()
        forms = {f for s in secrets if s for f in (s, json.dumps(s)[1:-1])}
        self.secrets = sorted(forms, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        line = self._format(record)
        for secret in self.secrets:
            line = line.replace(secret, "***")
        return line

    def _format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        for key, value in logcontext.current().items():  # the message being handled
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str = "INFO", secrets: Sequence[str] = ()) -> None:
    """JSON logs to stderr; ``secrets`` (Settings.secrets()) never appear in them."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
