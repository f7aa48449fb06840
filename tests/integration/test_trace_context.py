"""The trace context kept beside each stored event, on the real PostgreSQL.

A poll's commands are stored in one append; every event carries the
``traceparent`` of the command that caused it (not the poll's, not its
neighbour's), read back with its notification. A table created by an older
release gains the column at start-up; its rows keep NULL.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from application.commands import ProvisionContent, RegisterBatch
from application.service import BatchService
from application.tracing import context_of, traceparent_of
from domain import Batch
from infrastructure.bootstrap import Bootstrap
from infrastructure.postgres.recorder import TracedNotification, traceparent_of_notification
from infrastructure.postgres.store import connect
from infrastructure.settings import Settings
from tests.conftest import ManualClock

TP = {
    name: f"00-{trace_id * 32}-{span_id * 16}-01"
    for name, trace_id, span_id in (("a1", "a", "1"), ("a2", "b", "2"), ("b1", "c", "3"))
}


def ctx(name: str) -> Context:
    found = context_of({"traceparent": TP[name]})
    assert found is not None
    return found


def register(batch_id: str, *essays: str) -> RegisterBatch:
    return RegisterBatch(batch_id=batch_id, correlation_id=f"c-{batch_id}", essay_ids=list(essays))


def provide(batch_id: str, tsid: str) -> ProvisionContent:
    return ProvisionContent(
        batch_id=batch_id,
        correlation_id=f"c-{tsid}",
        text_storage_id=tsid,
        file_upload_id=f"f-{tsid}",
        original_file_name="e.docx",
    )


def column(settings: Settings, batch_id: str) -> list[tuple[int, str | None]]:
    with connect(settings) as conn:
        rows = conn.execute(
            f'SELECT originator_version, traceparent FROM "{settings.database_schema}"'
            ".batchservice_events WHERE originator_id = %s ORDER BY originator_version",
            (Batch.create_id(batch_id),),
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


@pytest.fixture
def svc(test_settings: Settings) -> Iterator[BatchService]:
    service = Bootstrap(test_settings).batch_service(clock=ManualClock())
    yield service
    service.close()


def test_each_event_of_one_append_keeps_its_own_commands_traceparent(
    test_settings: Settings, svc: BatchService
) -> None:
    results = svc.execute(
        [register("a", "e1", "e2"), register("b", "e1"), provide("a", "t1"), provide("b", "t2")],
        [ctx("a1"), ctx("b1"), ctx("a2"), None],
    )
    assert [r.outcome for r in results] == ["recorded"] * 4
    assert len({r.position for r in results}) <= 2  # one append for the poll
    assert column(test_settings, "a") == [(1, TP["a1"]), (2, TP["a2"])]
    # b: registered (b1), then its content fills the only slot: SlotAssigned and
    # BatchCompleted, both caused by the content's command, which had no context.
    assert column(test_settings, "b") == [(1, TP["b1"]), (2, None), (3, None)]
    page = svc.recorder.select_notifications(start=None, limit=100)
    assert all(isinstance(n, TracedNotification) for n in page)
    by_key = {(n.originator_id, n.originator_version): traceparent_of_notification(n) for n in page}
    assert by_key[(Batch.create_id("a"), 2)] == TP["a2"]
    assert by_key[(Batch.create_id("b"), 3)] is None


def test_content_pended_then_placed_by_a_registration_carries_each_cause(
    test_settings: Settings, svc: BatchService
) -> None:
    """Events caused by a later command (a registration placing pended content)
    carry that command's context, not the content's."""
    svc.execute([provide("p", "t1")], [ctx("a1")])
    svc.execute([register("p", "e1")], [ctx("b1")])
    assert [tp for _, tp in column(test_settings, "p")] == [TP["a1"], TP["b1"], TP["b1"], TP["b1"]]


def test_a_stale_cached_decision_retried_alone_keeps_its_context(
    test_settings: Settings, svc: BatchService
) -> None:
    """A version conflict sends a batch to the one-by-one path: its events still
    carry their commands' contexts."""
    svc.execute([register("r", "e1", "e2")], [ctx("a1")])
    other = Bootstrap(test_settings).batch_service(clock=ManualClock())
    try:
        other.execute([provide("r", "t1")])  # moves the stream behind svc's cached copy
    finally:
        other.close()
    conflicts: list[int] = []
    svc.on_conflict = lambda: conflicts.append(1)
    svc.execute([provide("r", "t2")], [ctx("a2")])
    assert conflicts  # the cached decision lost the race and was decided again
    assert column(test_settings, "r") == [(1, TP["a1"]), (2, None), (3, TP["a2"]), (4, TP["a2"])]


def test_decide_and_store_spans_under_each_commands_context(test_settings: Settings) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    svc = Bootstrap(test_settings).batch_service(
        clock=ManualClock(), tracer=provider.get_tracer("t")
    )
    try:
        svc.execute([register("s", "e1"), register("s", "e1", "e2")], [ctx("a1"), ctx("a2")])
    finally:
        svc.close()
        provider.shutdown()
    spans: dict[str, list[Any]] = {}
    for span in exporter.get_finished_spans():
        spans.setdefault(span.name, []).append(span)
    parents = {name: sorted(s.parent.span_id for s in ss) for name, ss in spans.items()}
    # Both commands decided; only the first recorded events (the second is a
    # conflicting re-registration, rejected): one store span, under a1.
    assert parents == {
        "decide": sorted([0x1111111111111111, 0x2222222222222222]),
        "store": [0x1111111111111111],
    }
    rejected = next(s for s in spans["decide"] if s.parent.span_id == 0x2222222222222222)
    assert rejected.attributes["batch_slot.outcome"] == "rejected"


def test_an_events_table_of_an_older_release_gains_the_column(test_settings: Settings) -> None:
    first = Bootstrap(test_settings).batch_service()
    first.execute([register("old", "e1")])
    first.close()
    table = f'"{test_settings.database_schema}".batchservice_events'
    with connect(test_settings) as conn:
        conn.execute(f"ALTER TABLE {table} DROP COLUMN traceparent")  # as an older release made it
    again = Bootstrap(test_settings).batch_service()
    try:
        again.execute([provide("old", "t1")], [ctx("a1")])
        assert column(test_settings, "old") == [(1, None), (2, TP["a1"]), (3, TP["a1"])]
        assert traceparent_of(ctx("a1")) == TP["a1"]
    finally:
        again.close()
