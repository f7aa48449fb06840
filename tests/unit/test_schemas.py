"""Published schemas (docs/schemas/, docs/asyncapi.json) match the models, and the
models match what the reader accepts and what the outbox writes."""

from __future__ import annotations

import importlib.util
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import uuid4

import pytest
from pydantic import ValidationError

from application.messages import InvalidMessage, TopicKind, parse_inbound
from application.schemas import (
    DEFAULT_TOPICS,
    INBOUND_MODELS,
    OUTBOUND_DATA,
    OUTBOUND_MODELS,
    published_documents,
)
from domain.batch import Batch
from infrastructure.settings import Topics
from projections.envelope import DATA_FIELDS, envelope_dict
from tests.unit.test_messages import DATA, message

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def schemas_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("schemas_script", ROOT / "scripts/schemas.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------- drift


def test_committed_documents_are_what_the_models_generate() -> None:
    bad = schemas_script().drifted(DOCS)
    assert bad == [], f"docs drifted from the models: {bad}; run python scripts/schemas.py"


def test_the_drift_check_sees_a_changed_a_missing_and_a_stale_file(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(DOCS / "schemas", docs / "schemas")
    shutil.copy(DOCS / "asyncapi.json", docs / "asyncapi.json")
    script = schemas_script()
    assert script.drifted(docs) == []
    changed = docs / "schemas/outbound/BatchCompleted.v1.schema.json"
    changed.write_text(changed.read_text().replace('"parts"', '"partz"'))
    (docs / "schemas/inbound/EssayValidationFailed.v1.schema.json").unlink()
    (docs / "schemas/outbound/BatchExploded.v1.schema.json").write_text("{}")
    assert script.drifted(docs) == [
        "schemas/inbound/EssayValidationFailed.v1.schema.json",
        "schemas/outbound/BatchCompleted.v1.schema.json",
        "schemas/outbound/BatchExploded.v1.schema.json",
    ]
    script.write(docs)
    assert script.drifted(docs) == []


def test_every_document_is_json_with_a_dialect_and_a_topic() -> None:
    topics = Topics()
    for path, text in published_documents().items():
        document = json.loads(text)
        if path == "asyncapi.json":
            continue
        assert document["$schema"].startswith("https://json-schema.org/")
        assert document["x-topic"] in topics.all
        assert document["$id"] == path.rsplit("/", 1)[-1]


# ------------------------------------------------------------------ asyncapi


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def resolve(document: dict[str, Any], pointer: str) -> Any:
    node: Any = document
    for part in pointer.lstrip("#/").split("/"):
        node = node[part]
    return node


def test_asyncapi_names_the_five_topics_and_every_reference_resolves() -> None:
    document = json.loads((DOCS / "asyncapi.json").read_text())
    assert document["asyncapi"].startswith("3.")
    addresses = {c["address"] for c in document["channels"].values()}
    assert addresses == set(Topics().all) == set(DEFAULT_TOPICS.values())
    all_refs = refs(document)
    files = {r for r in all_refs if not r.startswith("#")}
    assert len(files) == len(INBOUND_MODELS) + len(OUTBOUND_MODELS)
    for ref in files:
        assert (DOCS / ref).is_file(), ref
        json.loads((DOCS / ref).read_text())
    for ref in all_refs:
        if ref.startswith("#"):
            assert resolve(document, ref) is not None, ref
    events = document["channels"]["events"]["messages"]
    assert set(events) == set(DATA_FIELDS)
    actions = {op["action"] for op in document["operations"].values()}
    assert actions == {"send", "receive"}


# ------------------------------------------------------------------- inbound


KINDS: list[TopicKind] = ["registered", "provisioned", "failed"]


@pytest.mark.parametrize("kind", KINDS)
def test_inbound_models_accept_what_the_reader_accepts(kind: TopicKind) -> None:
    for value in (
        message(kind),
        message(kind, {**DATA[kind], "new_upstream_field": [1, 2]}, trace_id="x"),
    ):
        parse_inbound(kind, value)
        INBOUND_MODELS[kind].model_validate_json(value)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "override",
    [
        {"schema_version": 2},
        {"schema_version": "1"},
        {"event_type": "SomethingElse"},
        {"correlation_id": "nope"},
        {"data": {"batch_id": "has space"}},
    ],
)
def test_inbound_models_refuse_what_the_reader_refuses(
    kind: TopicKind, override: dict[str, Any]
) -> None:
    value = message(kind, **override)
    with pytest.raises(InvalidMessage):
        parse_inbound(kind, value)
    with pytest.raises(ValidationError):
        INBOUND_MODELS[kind].model_validate_json(value)


# ------------------------------------------------------------------ outbound


def real_events() -> list[Any]:
    """Events from real aggregates: every outbound type, both outcomes, a completion in parts."""
    cid = lambda: str(uuid4())  # noqa: E731 - inbound correlation ids are UUIDs
    done = Batch.start("b-1", T0)
    done.provision_content("t0", "f0", "ö.txt", T0, cid())
    done.register(["e1", "e2", "e3"], T0, 3600, cid())
    done.provision_content("t1", "f1", "a.txt", T0, cid())
    done.record_validation_failure("f9", "bad.txt", "EMPTY_CONTENT", T0, cid())
    done.provision_content("t2", "f2", "b.txt", T0, cid())  # closed -> BATCH_CLOSED
    full = Batch.start("b-full", T0)  # two pending, one slot -> NO_AVAILABLE_SLOT
    full.provision_content("t1", "f1", "a.txt", T0, cid())
    full.provision_content("t2", "f2", "b.txt", T0, cid())
    full.register(["e1"], T0, 3600, cid())
    timed = Batch.start("b-2", T0)
    timed.register(["e1", "e2"], T0, 3600, cid())
    timed.time_out(T0 + timedelta(hours=2), cid())
    expired = Batch.start("b-3", T0)
    expired.provision_content("t1", "f1", "a.txt", T0, cid())
    expired.expire_pending(T0 + timedelta(days=2), 86400, cid())
    big = Batch.start("b-big", T0)
    ids = [f"{n:05d}".ljust(128, "e") for n in range(5000)]
    big.register(ids, T0, 3600, cid())
    for n in range(2500):  # long failures, then a timeout: a completion in parts
        big.record_validation_failure(f"{n:05d}".ljust(128, "f"), "n" * 255, "E", T0, cid())
    big.time_out(T0 + timedelta(hours=2), cid())
    batches = (done, full, timed, expired, big)
    return [e for b in batches for e in b.collect_events()]


def test_real_events_validate_against_the_outbound_models() -> None:
    events = real_events()
    envelopes = [envelope_dict(e, "batch-slot-service") for e in events]
    seen = {(d["event_type"], d["data"].get("reason"), d["data"].get("outcome")) for d in envelopes}
    assert {t for t, _, _ in seen} == set(OUTBOUND_MODELS)
    assert ("ExcessContentProvisioned", "NO_AVAILABLE_SLOT", None) in seen
    assert ("ExcessContentProvisioned", "BATCH_CLOSED", None) in seen
    assert {o for t, _, o in seen if t == "BatchCompleted"} == {"complete", "timed_out"}
    assert max(d["data"].get("parts", 1) for d in envelopes) > 1
    for document in envelopes:
        model = OUTBOUND_MODELS[document["event_type"]]
        model.model_validate_json(json.dumps(document))
        # Exactly the fields: nothing the outbox writes is missing from the schema.
        assert set(document) == set(model.model_fields)
        data_model = OUTBOUND_DATA[document["event_type"]]
        assert set(document["data"]) == set(data_model.model_fields)


def test_outbound_data_models_list_the_outbox_fields_in_order() -> None:
    assert {t: tuple(m.model_fields) for t, m in OUTBOUND_DATA.items()} == dict(DATA_FIELDS)


def test_outbound_models_refuse_a_wrong_value() -> None:
    [document] = [
        envelope_dict(e, "s") for e in real_events() if type(e).__name__ == "BatchCompleted"
    ][:1]
    bad = {**document, "data": {**document["data"], "outcome": "done"}}
    with pytest.raises(ValidationError):
        OUTBOUND_MODELS["BatchCompleted"].model_validate_json(json.dumps(bad))
    with pytest.raises(ValidationError):
        OUTBOUND_MODELS["SlotAssigned"].model_validate_json(json.dumps(document))
