"""Hypothesis strategies shared by the property, read-model and outbox tests.

A *step* is either a command (as the worker would build it) or a ``Tick``
that moves the injected clock forward. Identifiers come from small pools so
that duplicates, excess and conflicts are common. On purpose, content and
failures draw their ``file_upload_id`` from ONE pool: the same file reported
as content and as a failure, or as content under two storage ids, is the case
CONTRACT §2 "One file, one outcome" is about.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from application.commands import (
    AnyCommand,
    ExpirePending,
    ProvisionContent,
    RecordValidationFailure,
    RegisterBatch,
    TimeOutBatch,
)

BATCH_IDS = ("b-alpha", "b-beta", "b-gamma")
TIMEOUT_SECONDS = 3600
PENDING_TTL_SECONDS = 1800


@dataclass(frozen=True)
class Tick:
    seconds: int


Step = AnyCommand | Tick

correlation_ids = st.sampled_from(["c-1", "c-2", "c-3"])
text_storage_ids = st.sampled_from([f"t{i}" for i in range(10)])
# Shared by contents() and failures(): see the module docstring.
file_upload_ids = st.sampled_from([f"f{i}" for i in range(6)])
essay_id_lists = st.lists(
    st.sampled_from([f"e{i}" for i in range(8)]), min_size=1, max_size=6, unique=True
)


def registrations(batch_id: str) -> st.SearchStrategy[RegisterBatch]:
    return st.builds(
        RegisterBatch,
        batch_id=st.just(batch_id),
        correlation_id=correlation_ids,
        essay_ids=essay_id_lists,
        course_code=st.none() | st.sampled_from(["ENG5", "SV1"]),
        user_id=st.none() | st.just("user-1"),
    )


def contents(batch_id: str) -> st.SearchStrategy[ProvisionContent]:
    return st.builds(
        ProvisionContent,
        batch_id=st.just(batch_id),
        correlation_id=correlation_ids,
        text_storage_id=text_storage_ids,
        file_upload_id=file_upload_ids,
        original_file_name=st.sampled_from(["a.txt", "b.docx", "ö'; DROP TABLE x;--.pdf"]),
    )


def failures(batch_id: str) -> st.SearchStrategy[RecordValidationFailure]:
    return st.builds(
        RecordValidationFailure,
        batch_id=st.just(batch_id),
        correlation_id=correlation_ids,
        file_upload_id=file_upload_ids,
        original_file_name=st.just("bad.txt"),
        error_code=st.sampled_from(["EMPTY_CONTENT", "TOO_LONG"]),
    )


def sweeps(batch_id: str) -> st.SearchStrategy[AnyCommand]:
    return st.one_of(
        st.builds(TimeOutBatch, batch_id=st.just(batch_id), correlation_id=correlation_ids),
        st.builds(ExpirePending, batch_id=st.just(batch_id), correlation_id=correlation_ids),
    )


ticks = st.builds(Tick, seconds=st.sampled_from([1, 600, PENDING_TTL_SECONDS, TIMEOUT_SECONDS]))


def steps(batch_ids: tuple[str, ...] = BATCH_IDS) -> st.SearchStrategy[Step]:
    """One step for any of the given batches, weighted towards content."""
    per_batch = [
        st.one_of(registrations(b), contents(b), contents(b), contents(b), failures(b), sweeps(b))
        for b in batch_ids
    ]
    return st.one_of(*per_batch, ticks)


def workloads(
    batch_ids: tuple[str, ...] = BATCH_IDS, max_size: int = 40
) -> st.SearchStrategy[list[Step]]:
    return st.lists(steps(batch_ids), min_size=1, max_size=max_size)
