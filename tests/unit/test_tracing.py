"""Tracing's pure parts: W3C headers, the settings that turn it on, the envelope's header."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from opentelemetry.sdk.trace import TracerProvider

from application.tracing import context_of, traceparent_of
from infrastructure.bootstrap import Bootstrap
from infrastructure.kafka.dlq import DeadLetter, dlq_headers, without_value
from infrastructure.settings import SettingsError, load_settings
from infrastructure.tracing import Tracing, build_tracing, context_from_headers, with_traceparent
from projections.envelope import envelope_of
from tests.unit.test_envelope import SOURCE, every_event_type

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
OTHER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"


def test_a_valid_traceparent_round_trips() -> None:
    assert traceparent_of(context_of({"traceparent": TP})) == TP
    assert traceparent_of(context_of({"traceparent": OTHER})) == OTHER  # not sampled: kept so


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero span id
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff is invalid
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case
    ],
)
def test_an_invalid_traceparent_is_no_context(value: str) -> None:
    assert context_of({"traceparent": value}) is None
    assert context_from_headers([("traceparent", value.encode())]) is None


def test_no_context_has_no_traceparent() -> None:
    assert traceparent_of(None) is None
    assert context_of({}) is None


def test_context_from_kafka_headers() -> None:
    assert context_from_headers(None) is None
    assert context_from_headers([]) is None
    assert context_from_headers([("event_id", b"x")]) is None
    assert context_from_headers([("traceparent", b"\xff\xfe")]) is None  # not ASCII
    assert context_from_headers([("traceparent", None)]) is None
    found = context_from_headers([("x", b"1"), ("traceparent", TP.encode())])
    assert traceparent_of(found) == TP
    # Several traceparent headers: the first one counts.
    both = [("traceparent", TP.encode()), ("traceparent", OTHER.encode())]
    assert traceparent_of(context_from_headers(both)) == TP


def test_with_traceparent_replaces_the_trace_headers_only() -> None:
    headers = [("a", b"1"), ("traceparent", OTHER.encode()), ("tracestate", b"k=v")]
    assert with_traceparent(headers, None) == headers
    assert with_traceparent(headers, TP) == [("a", b"1"), ("traceparent", TP.encode())]
    assert with_traceparent([], TP) == [("traceparent", TP.encode())]


def test_the_envelope_carries_a_traceparent_header_only_when_given() -> None:
    event = every_event_type()[0]
    plain, traced = envelope_of(event, SOURCE), envelope_of(event, SOURCE, TP)
    assert "traceparent" not in dict(plain.headers)
    assert traced.headers == [*plain.headers, ("traceparent", TP.encode())]
    assert traced.value == plain.value and traced.key == plain.key


def _record(headers: list[tuple[str, bytes]]) -> SimpleNamespace:
    return SimpleNamespace(topic="t", partition=0, offset=7, key=b"k", value=b"v", headers=headers)


def test_a_dead_letter_keeps_the_original_trace_unless_given_its_own() -> None:
    original = [("traceparent", OTHER.encode()), ("tracestate", b"k=v")]
    kept = dlq_headers(DeadLetter(_record(original), "R", "d"))
    assert kept[:2] == original
    replaced = dlq_headers(DeadLetter(_record(original), "R", "d", TP))
    assert [(k, v) for k, v in replaced if k in ("traceparent", "tracestate")] == [
        ("traceparent", TP.encode())
    ]


def test_an_oversize_dead_letter_keeps_its_own_traceparent() -> None:
    import dataclasses

    @dataclasses.dataclass
    class Record:
        topic: str = "t"
        partition: int = 0
        offset: int = 1
        key: bytes | None = b"k"
        value: bytes | None = b"v" * 10
        headers: tuple[tuple[str, bytes], ...] = (("traceparent", OTHER.encode()),)

    letter = without_value(DeadLetter(Record(), "R", "d", TP))
    assert dict(dlq_headers(letter))["traceparent"] == TP.encode()


# --------------------------------------------------------------- settings


def test_tracing_is_off_unless_configured() -> None:
    s = load_settings({})
    assert not s.tracing_enabled and s.otel_traces_endpoint is None
    assert build_tracing(s).tracer is None


def test_an_otlp_endpoint_turns_tracing_on() -> None:
    s = load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"})
    assert s.otel_traces_exporter == "otlp"
    assert s.otel_traces_endpoint == "http://collector:4318/v1/traces"
    signal = load_settings(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces.example/in",
        }
    )
    assert signal.otel_traces_endpoint == "https://traces.example/in"  # used as it is
    default = load_settings({"OTEL_TRACES_EXPORTER": "otlp"})
    assert default.otel_traces_endpoint == "http://localhost:4318/v1/traces"
    assert load_settings({"OTEL_TRACES_EXPORTER": "console"}).tracing_enabled


def test_tracing_can_be_switched_off_explicitly() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert not load_settings({**endpoint, "OTEL_TRACES_EXPORTER": "none"}).tracing_enabled
    assert not load_settings({**endpoint, "OTEL_SDK_DISABLED": "true"}).tracing_enabled


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "ftp://collector"},
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ],
)
def test_bad_tracing_settings_name_their_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=f"^{variable}:"):
        load_settings(env)


def test_the_endpoints_password_is_never_shown() -> None:
    s = load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://u:s3cret@collector:4318"})
    assert "s3cret" not in str(s.redacted())
    assert "s3cret" in s.secrets()


def test_the_container_builds_the_provider_once_and_flushes_it_on_close(
    capfd: pytest.CaptureFixture[str],
) -> None:
    s = load_settings({"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "slots-a"})
    container = Bootstrap(s)
    tracing = container.tracing
    assert tracing.enabled and container.tracing is tracing
    assert isinstance(tracing.provider, TracerProvider)
    assert tracing.provider.resource.attributes["service.name"] == "slots-a"
    assert tracing.tracer is not None
    tracing.tracer.start_span("buffered-span").end()  # waits in the batching processor
    container.close()  # shuts the provider down: what is buffered is exported
    assert '"name": "buffered-span"' in capfd.readouterr().out


def test_a_given_provider_is_not_shut_down_by_the_container() -> None:
    provider = TracerProvider()
    container = Bootstrap(load_settings({}), tracing=Tracing.of(provider))
    container.close()
    span = provider.get_tracer("t").start_span("still")
    assert span.is_recording()
    span.end()
    provider.shutdown()
