"""Tracing through the real broker and PostgreSQL: a trace crosses the service.

An inbound message's W3C ``traceparent`` header reaches the events it causes on
``batch.events.v1`` (the same trace id), through the context stored with each
event. Tracing on (the SDK's in-memory exporter): spans ``consume`` (under the
inbound span), ``decide`` and ``store`` (under ``consume``), ``project`` and
``publish`` (under the context stored with the event, i.e. ``consume``), and the
outbound header names the ``publish`` span. Tracing off: the inbound
``traceparent`` passes through unchanged, and none is invented. A real
``batchctl run`` process exports the same trace over OTLP/HTTP.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from domain import Batch
from infrastructure.bootstrap import Bootstrap
from infrastructure.kafka.clients import make_producer
from infrastructure.postgres.store import connect
from infrastructure.settings import Settings
from infrastructure.tracing import Tracing
from tests.e2e.conftest import consume, eventually, running, topic_of
from tests.e2e.test_health import direct_url, start, stop
from tests.support.otlp import Collector
from tests.support.scenario import Message, content, envelope, registration

# Two upstream traces: the registration's and the content's.
REG_TRACE, REG_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
CON_TRACE, CON_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
BAD_TRACE, BAD_SPAN = "5c0e6a7d2b1f4e3a9d8c7b6a5f4e3d2c", "1a2b3c4d5e6f7a8b"


def traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"


def ids(tp: str) -> tuple[str, str]:
    """(trace id, span id) of a traceparent."""
    version, trace_id, span_id, _ = tp.split("-")
    assert version == "00"
    return trace_id, span_id


async def produce_with(settings: Settings, items: list[tuple[Message, str | None]]) -> None:
    """Send each message with its ``traceparent`` header (None: no trace headers)."""
    producer = make_producer(settings)
    await producer.start()
    try:
        for message, tp in items:
            headers = [("traceparent", tp.encode())] if tp is not None else []
            await producer.send_and_wait(
                topic_of(settings, message),
                value=message.value,
                key=message.key.encode(),
                headers=headers,
            )
    finally:
        await producer.stop()


def header(record: Any, name: str) -> str | None:
    values = [v.decode() for k, v in record.headers if k == name]
    assert len(values) <= 1, f"header {name} twice"
    return values[0] if values else None


def outbound(records: list[Any]) -> dict[str, Any]:
    """The records of batch.events.v1 by event type (one each in these scenarios)."""
    by_type: dict[str, Any] = {}
    for r in records:
        by_type.setdefault(json.loads(r.value)["event_type"], r)
    return by_type


def stored_traceparents(settings: Settings, batch_id: str) -> list[str | None]:
    with connect(settings) as conn:
        rows = conn.execute(
            f'SELECT traceparent FROM "{settings.database_schema}".batchservice_events '
            "WHERE originator_id = %s ORDER BY originator_version",
            (Batch.create_id(batch_id),),
        ).fetchall()
    return [r[0] for r in rows]


@pytest.fixture
def exporter() -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter, provider
    provider.shutdown()


def hex_ids(span: ReadableSpan) -> tuple[str, str, str | None]:
    """(trace id, span id, parent span id) in hex."""
    ctx = span.get_span_context()
    assert ctx is not None
    parent = f"{span.parent.span_id:016x}" if span.parent is not None else None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}", parent


def test_an_inbound_trace_reaches_the_outbound_events_through_every_span(
    e2e_settings: Settings, exporter: tuple[InMemorySpanExporter, TracerProvider]
) -> None:
    spans_out, provider = exporter
    container = Bootstrap(e2e_settings, tracing=Tracing.of(provider))
    service = container.service
    worker, outbox, projector = container.worker(), container.outbox(), container.projector()
    bad = Message("registered", "t", envelope("registered", {"batch_id": "has space"}))

    async def scenario() -> list[Any]:
        async with (
            running(worker.run),
            running(outbox.run),
            running(projector.serve),
        ):
            # One after the other: content first would be pended, and its slot
            # assigned by the registration's command (so under the registration's trace).
            await produce_with(
                e2e_settings, [(registration("t", ["e1", "e2"]), traceparent(REG_TRACE, REG_SPAN))]
            )
            await eventually(lambda: service.get_batch("t") is not None)
            await produce_with(
                e2e_settings,
                [
                    (content("t", "t1", "f1"), traceparent(CON_TRACE, CON_SPAN)),
                    (bad, traceparent(BAD_TRACE, BAD_SPAN)),
                ],
            )
            records = await consume(
                e2e_settings,
                e2e_settings.topics.events,
                lambda rs: {"BatchRegistered", "SlotAssigned"} <= set(outbound(rs)),
            )
            await eventually(lambda: projector.applied is not None and projector.applied >= 2)
        return records

    try:
        records = asyncio.run(scenario())
        dlq = asyncio.run(consume(e2e_settings, e2e_settings.topics.dlq, lambda rs: len(rs) >= 1))
    finally:
        container.close()
    events = outbound(records)
    spans = spans_out.get_finished_spans()
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)

    # consume: one per inbound message, a CONSUMER span under the inbound span.
    consumes = {hex_ids(s)[0]: s for s in by_name["consume"]}
    assert set(consumes) == {REG_TRACE, CON_TRACE, BAD_TRACE}
    for trace_id, span_id in ((REG_TRACE, REG_SPAN), (CON_TRACE, CON_SPAN)):
        span = consumes[trace_id]
        assert span.kind is SpanKind.CONSUMER
        assert span.parent is not None and span.parent.is_remote
        assert hex_ids(span)[2] == span_id
        assert span.attributes is not None and span.attributes["batch_slot.batch_id"] == "t"

    # decide and store: one each per command, under its consume span.
    for name in ("decide", "store"):
        under = {hex_ids(s)[0]: hex_ids(s)[2] for s in by_name[name]}
        assert under == {t: hex_ids(consumes[t])[1] for t in (REG_TRACE, CON_TRACE)}, name

    # The stored context of each event is its command's consume span.
    stored = stored_traceparents(e2e_settings, "t")
    assert [ids(tp) for tp in stored if tp is not None] == [
        ids(traceparent(REG_TRACE, hex_ids(consumes[REG_TRACE])[1])),
        ids(traceparent(CON_TRACE, hex_ids(consumes[CON_TRACE])[1])),
    ]
    assert None not in stored

    # publish: a PRODUCER span per event under the stored context, named by the header.
    publishes = {hex_ids(s)[1]: s for s in by_name["publish"]}
    for event_type, trace_id in (("BatchRegistered", REG_TRACE), ("SlotAssigned", CON_TRACE)):
        tp = header(events[event_type], "traceparent")
        assert tp is not None, event_type
        header_trace, header_span = ids(tp)
        assert header_trace == trace_id  # the upstream trace crossed the service
        span = publishes[header_span]
        assert span.kind is SpanKind.PRODUCER
        assert hex_ids(span)[2] == hex_ids(consumes[trace_id])[1]
        assert span.attributes is not None
        assert span.attributes["messaging.message.id"] == header(events[event_type], "event_id")

    # project: under the stored context too.
    projected = {(hex_ids(s)[0], hex_ids(s)[2]) for s in by_name["project"]}
    assert projected == {(t, hex_ids(consumes[t])[1]) for t in (REG_TRACE, CON_TRACE)}

    # The dead letter carries its consume span's context (the bad message's trace).
    assert len(dlq) == 1
    letter_tp = header(dlq[0], "traceparent")
    assert letter_tp is not None
    assert ids(letter_tp) == (BAD_TRACE, hex_ids(consumes[BAD_TRACE])[1])


def test_tracing_off_passes_the_inbound_traceparent_through_and_invents_none(
    e2e_settings: Settings,
) -> None:
    container = Bootstrap(e2e_settings)
    assert not container.tracing.enabled  # no OTEL_* variables: off
    worker, outbox = container.worker(), container.outbox()
    bad = Message("registered", "x", envelope("registered", {"batch_id": "has space"}))
    inbound = traceparent(REG_TRACE, REG_SPAN)

    async def scenario() -> list[Any]:
        async with running(worker.run), running(outbox.run):
            await produce_with(
                e2e_settings,
                [
                    (registration("on", ["e1"]), inbound),
                    (registration("plain", ["e1"]), None),
                    (content("plain", "t1", "f1"), "not a traceparent"),
                    (bad, traceparent(BAD_TRACE, BAD_SPAN)),
                ],
            )
            return await consume(
                e2e_settings,
                e2e_settings.topics.events,
                lambda rs: (
                    {("on", "BatchRegistered"), ("plain", "BatchCompleted")}
                    <= {(r.key.decode(), json.loads(r.value)["event_type"]) for r in rs}
                ),
            )

    try:
        records = asyncio.run(scenario())
        dlq = asyncio.run(consume(e2e_settings, e2e_settings.topics.dlq, lambda rs: len(rs) >= 1))
    finally:
        container.close()
    by_batch: dict[str, list[Any]] = {}
    for r in records:
        by_batch.setdefault(r.key.decode(), []).append(r)
    assert {header(r, "traceparent") for r in by_batch["on"]} == {inbound}  # unchanged
    assert {header(r, "traceparent") for r in by_batch["plain"]} == {None}  # none invented
    assert "SlotAssigned" in {json.loads(r.value)["event_type"] for r in by_batch["plain"]}
    assert set(stored_traceparents(e2e_settings, "on")) == {inbound}
    assert set(stored_traceparents(e2e_settings, "plain")) == {None}
    # The dead letter keeps the original headers, traceparent included.
    assert header(dlq[0], "traceparent") == traceparent(BAD_TRACE, BAD_SPAN)


@pytest.mark.timeout(240)
def test_a_batchctl_run_process_exports_the_whole_trace_over_otlp(
    e2e_settings: Settings, tmp_path: Path
) -> None:
    """The real process, configured only by OTEL_EXPORTER_OTLP_ENDPOINT: one inbound
    trace id on the outbound header and on every span the collector receives; the
    spans still buffered at SIGTERM are flushed as the process stops."""
    inbound = traceparent(REG_TRACE, REG_SPAN)
    with Collector() as collector:
        p = start(
            e2e_settings,
            tmp_path,
            direct_url(),
            OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
            OTEL_SERVICE_NAME="slots-under-test",
        )
        try:
            p.wait(lambda: p.readyz()[0] == 200, "/readyz 200")
            asyncio.run(produce_with(e2e_settings, [(registration("run", ["e1"]), inbound)]))
            records = asyncio.run(
                consume(e2e_settings, e2e_settings.topics.events, lambda rs: len(rs) >= 1)
            )
        finally:
            stop(p)
        assert p.proc.returncode == 0, p.tail()
        tp = header(records[0], "traceparent")
        assert tp is not None and ids(tp)[0] == REG_TRACE
        spans = [s for service, s in collector.spans() if service == "slots-under-test"]
    in_trace = {s.name for s in spans if s.trace_id.hex() == REG_TRACE}
    assert {"consume", "decide", "store", "project", "publish"} <= in_trace, in_trace
    (publish,) = [s for s in spans if s.name == "publish"]
    assert publish.span_id.hex() == ids(tp)[1]  # the header names the publish span
