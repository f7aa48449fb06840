"""The main job's HuleEdu-shaped scenario is what HuleEdu's own models produce.

``tests/support/huleedu_scenario.py`` re-encodes the native scenario as HuleEdu's
services send it; every valid message must validate against the JSON Schemas of
HuleEdu's models (the envelope, then its data model) and parse to the same
command as its native original.
"""

from __future__ import annotations

import json

from application.messages import parse_message
from tests.huleedu_wire import INBOUND_MODEL_OF_TOPIC, validate
from tests.support.huleedu_scenario import TOPIC_OF, as_huleedu, owner_of
from tests.support.scenario import generate


def test_every_valid_message_is_valid_for_huleedus_models_and_means_the_same() -> None:
    native = generate("t1", batches=12, seed=3)
    huleedu = as_huleedu(native, seed=3)
    assert len(huleedu.messages) == len(native.messages)
    checked = 0
    for before, after in zip(native.messages, huleedu.messages, strict=True):
        if before.value == after.value:  # an invalid message, left as it is
            continue
        envelope = json.loads(after.value)
        validate("EventEnvelope", envelope)
        validate(INBOUND_MODEL_OF_TOPIC[TOPIC_OF[after.kind]], envelope["data"])
        assert envelope["event_type"] == TOPIC_OF[after.kind]
        command = parse_message(after.kind, after.value, "huleedu")
        original = parse_message(before.kind, before.value)
        assert command.model_dump(exclude={"course_code", "user_id"}) == original.model_dump(
            exclude={"course_code", "user_id"}
        )
        if after.kind == "registered":
            assert after.key == command.batch_id
            assert (command.course_code, command.user_id) == owner_of(command.batch_id)  # type: ignore[union-attr]
        else:
            assert after.key == envelope["data"]["file_upload_id"]  # File Service's key
        checked += 1
    assert checked == len(native.messages) - native.invalid


def test_a_duplicate_is_a_relay_republish_with_a_new_event_id() -> None:
    huleedu = as_huleedu(generate("t2", batches=12, seed=5), seed=5)
    ids = [json.loads(m.value).get("event_id") for m in huleedu.messages]
    assert len(ids) == len(set(ids))
