"""Every Redis key the service writes: the public read model (CONTRACT §4) and its own.

A hash tag (``{batch_id}``) keeps one batch's keys in one Redis Cluster slot.
``prefix`` is ``REDIS_KEY_PREFIX`` (empty in production; tests isolate with it).
"""

from __future__ import annotations


def summary_key(prefix: str, batch_id: str) -> str:
    return f"{prefix}batch:{{{batch_id}}}:summary"


def available_slots_key(prefix: str, batch_id: str) -> str:
    return f"{prefix}batch:{{{batch_id}}}:available_slots"


def assignments_key(prefix: str, batch_id: str) -> str:
    return f"{prefix}batch:{{{batch_id}}}:assignments"


def index_key(prefix: str, index: str) -> str:
    return f"{prefix}batchslot:index:{index}"


def tracking_key(prefix: str, application_name: str) -> str:
    return f"{prefix}batchslot:tracking:{application_name}"
