"""The message being handled, for every log line: ``correlation_id`` and ``batch_id``.

The worker sets these context variables around the handling of each message
(``message_context``); ``infrastructure/logs.py`` adds them to every JSON log
line written meanwhile, at any level and from any module (``asyncio.to_thread``
copies the context into the thread it runs in). A field the log call passes
itself (``extra=``) wins over the context.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

CORRELATION_ID: ContextVar[str | None] = ContextVar("correlation_id", default=None)
BATCH_ID: ContextVar[str | None] = ContextVar("batch_id", default=None)
MAX_ID = 128  # the contract's identifier length; anything longer is cut
MAX_PARSED = 1024 * 1024  # raw values larger than an envelope are not parsed for ids


def current() -> dict[str, str]:
    """The context's fields that are set."""
    found = {"correlation_id": CORRELATION_ID.get(), "batch_id": BATCH_ID.get()}
    return {k: v for k, v in found.items() if v is not None}


@contextlib.contextmanager
def message_context(correlation_id: str | None, batch_id: str | None) -> Iterator[None]:
    """Log lines written inside the block carry these ids (unset ones are left as they are)."""
    tokens = []
    if correlation_id is not None:
        tokens.append((CORRELATION_ID, CORRELATION_ID.set(str(correlation_id)[:MAX_ID])))
    if batch_id is not None:
        tokens.append((BATCH_ID, BATCH_ID.set(str(batch_id)[:MAX_ID])))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def command_context(command: Any) -> contextlib.AbstractContextManager[None]:
    """The context of a parsed command (it has both ids)."""
    return message_context(command.correlation_id, command.batch_id)


def record_ids(record: Any) -> tuple[str | None, str | None]:
    """Best-effort ids of a raw Kafka record (a dead letter that may not parse).

    ``correlation_id`` from the envelope, ``batch_id`` from ``data`` or else the
    record key (producers key by batch id); None where neither is readable.
    """
    correlation_id = batch_id = None
    value = getattr(record, "value", None)
    if value is not None and len(value) <= MAX_PARSED:
        try:
            envelope = json.loads(value)
        except Exception:  # best effort: any bad input (deep nesting: RecursionError)
            envelope = None
        if isinstance(envelope, dict):
            if isinstance(envelope.get("correlation_id"), str):
                correlation_id = envelope["correlation_id"]
            data = envelope.get("data")
            if isinstance(data, dict) and isinstance(data.get("batch_id"), str):
                batch_id = data["batch_id"]
    key = getattr(record, "key", None)
    if batch_id is None and isinstance(key, bytes | bytearray) and key:
        batch_id = bytes(key[:MAX_ID]).decode("utf-8", errors="replace")
    return correlation_id, batch_id


def record_context(record: Any) -> contextlib.AbstractContextManager[None]:
    return message_context(*record_ids(record))
