"""`batchctl status` (deadline, time left, published by the outbox) and `batchctl batches`
(the due-batch index), as an operator runs them, against the real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import sql

from application.commands import ProvisionContent, RegisterBatch
from infrastructure.bootstrap import Bootstrap
from infrastructure.postgres.store import connect
from infrastructure.settings import Settings
from tests.e2e.test_cli import batchctl, one_line_error
from tests.integration.test_due_index import follow_until
from tests.support.followers import rebuilt


def seed(s: Settings) -> None:
    """b-soon: open, due in 5 min; b-later: open, due in a day; b-held: content pending."""
    with Bootstrap(s) as built:
        built.create_store()
        soon = built.batch_service(clock=lambda: datetime.now(UTC) - timedelta(seconds=86100))
        soon.register(RegisterBatch(batch_id="b-soon", correlation_id="c", essay_ids=["e1"]))
        soon.close()
        service = built.service
        service.register(RegisterBatch(batch_id="b-later", correlation_id="c", essay_ids=["e1"]))
        service.provision_content(ProvisionContent(
            batch_id="b-held", correlation_id="c", text_storage_id="t1", file_upload_id="f1",
            original_file_name="a.txt",
        ))
        head = service.recorder.max_notification_id() or 0
        asyncio.run(follow_until([built.due_follower()], built.due_index, head))
    rebuilt(s)


def test_status_shows_the_deadline_time_left_and_publication(test_settings: Settings) -> None:
    seed(test_settings)
    doc = json.loads(batchctl(test_settings, "status", "b-soon", "--json").stdout)
    left = doc["seconds_left"]
    assert 200 < left <= 300, doc
    assert datetime.fromisoformat(doc["deadline"]) > datetime.now(UTC)
    # No outbox has run yet: the batch's last event is not published.
    assert doc["outbox"] == {
        "last_event_position": 1, "outbox_position": 0, "published": False, "parked": 0,
    }
    table = batchctl(test_settings, "status", "b-soon").stdout
    assert "left)" in table and "outbox: not yet published" in table

    with connect(test_settings) as conn:  # an outbox published up to position 10
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (application_name, notification_id) VALUES ('BatchService', 10)"
            ).format(sql.Identifier(test_settings.database_schema, "outbox_tracking"))
        )
        conn.commit()
    doc = json.loads(batchctl(test_settings, "status", "b-soon", "--json").stdout)
    assert doc["outbox"]["published"] is True
    held = json.loads(batchctl(test_settings, "status", "b-held", "--json").stdout)
    assert held["deadline"] is None and held["seconds_left"] is None


def test_batches_lists_what_is_still_to_close_soonest_first(test_settings: Settings) -> None:
    seed(test_settings)

    def batches(*args: str) -> Any:
        # Pending content expires an hour after it arrived: b-held is due between the two.
        result = batchctl(test_settings, "batches", *args, PENDING_TTL_SECONDS="3600")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout) if "--json" in args else result.stdout

    every = batches("--json")
    assert [b["batch_id"] for b in every["batches"]] == ["b-soon", "b-held", "b-later"]
    assert [b["status"] for b in every["batches"]] == ["open", "awaiting_registration", "open"]
    assert every["index_position"] == every["store_position"] == 3
    assert 3500 < every["batches"][1]["seconds_left"] <= 3600
    opened = batches("--open", "--json")
    assert [b["batch_id"] for b in opened["batches"]] == ["b-soon", "b-later"]
    soon = batches("--open", "--due-within", "1h", "--json")
    assert [b["batch_id"] for b in soon["batches"]] == ["b-soon"]
    assert not soon["batches"][0]["overdue"]
    table = batches("--due-within", "10m")
    assert "b-soon" in table and "b-held" not in table and "b-later" not in table
    assert "--due-within" in one_line_error(
        batchctl(test_settings, "batches", "--due-within", "soon")
    )
