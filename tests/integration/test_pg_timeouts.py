"""Every PostgreSQL connection is bounded, checked on the real server."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest
from eventsourcing.persistence import OperationalError

from application.service import BatchService
from infrastructure.bootstrap import Bootstrap
from infrastructure.postgres import timeouts as pg_timeouts
from infrastructure.postgres.store import connect
from infrastructure.processes.worker import TRANSIENT
from infrastructure.settings import Settings
from tests.conftest import drop_schema, make_settings


@pytest.fixture
def bounded() -> Iterator[Settings]:
    s = make_settings(
        DATABASE_STATEMENT_TIMEOUT_SECONDS="0.5",
        DATABASE_CALL_TIMEOUT_SECONDS="1.5",
        DATABASE_KEEPALIVES_IDLE_SECONDS="7",
        DATABASE_TCP_USER_TIMEOUT_SECONDS="9",
    )
    yield s
    drop_schema(s)


@pytest.fixture
def bounded_service(bounded: Settings) -> Iterator[BatchService]:
    svc = Bootstrap(bounded).batch_service()
    yield svc
    svc.close()


def _datastore(service: BatchService) -> object:
    return service.recorder.datastore  # type: ignore[attr-defined]


def test_pooled_connections_carry_the_bounds(bounded_service: BatchService) -> None:
    datastore = _datastore(bounded_service)
    with datastore.get_connection() as conn:  # type: ignore[attr-defined]
        params = conn.info.get_parameters()
        assert params["keepalives_idle"] == "7"
        assert params["tcp_user_timeout"] == "9000"
        assert params["keepalives_count"] == "3"
        row = conn.execute("SHOW statement_timeout").fetchone()
        assert row["statement_timeout"] == "500ms"
        assert isinstance(conn, pg_timeouts.BoundedConnection)


def test_direct_connections_carry_the_bounds(bounded: Settings) -> None:
    with connect(bounded) as conn:
        assert conn.info.get_parameters()["tcp_user_timeout"] == "9000"
        assert conn.execute("SHOW statement_timeout").fetchone() == ("500ms",)


def test_statement_timeout_is_a_transient_error_of_the_event_store(
    bounded_service: BatchService,
) -> None:
    datastore = _datastore(bounded_service)
    get_connection = datastore.get_connection  # type: ignore[attr-defined]
    with pytest.raises(OperationalError) as caught, get_connection() as conn:
        conn.execute("SELECT pg_sleep(1)")
    assert isinstance(caught.value.__cause__, psycopg.errors.QueryCanceled)
    assert isinstance(caught.value, TRANSIENT)


def test_a_call_without_an_answer_gives_up_and_closes_its_connection(bounded: Settings) -> None:
    """The client-side deadline: the server is busy (statement_timeout disabled for
    this statement), the call gives up after DATABASE_CALL_TIMEOUT_SECONDS."""
    with connect(bounded) as conn:
        conn.execute("SET statement_timeout = 0")
        with pytest.raises(pg_timeouts.CallTimeout):
            conn.execute("SELECT pg_sleep(5)")
        assert conn.closed
    # Through the event store: the library's exception, transient for every loop.
    svc = Bootstrap(bounded).batch_service()
    try:
        get_connection = svc.recorder.datastore.get_connection  # type: ignore[attr-defined]
        with pytest.raises(OperationalError) as caught, get_connection() as c:
            c.execute("SET statement_timeout = 0")
            c.execute("SELECT pg_sleep(5)")
        assert isinstance(caught.value, TRANSIENT)
        # The pool replaces the closed connection: the next call works.
        with get_connection() as c:
            assert c.execute("SELECT 1 AS one").fetchone()["one"] == 1
    finally:
        svc.close()


def test_recycle_frees_a_thread_blocked_in_a_call() -> None:
    s = make_settings(DATABASE_CALL_TIMEOUT_SECONDS="60", DATABASE_STATEMENT_TIMEOUT_SECONDS="60")
    errors: list[BaseException] = []
    started, finished = threading.Event(), threading.Event()

    def blocked() -> None:
        try:
            with connect(s) as conn:
                started.set()
                conn.execute("SELECT pg_sleep(30)")
        except BaseException as e:
            errors.append(e)
        finally:
            finished.set()

    thread = threading.Thread(target=blocked, daemon=True)
    thread.start()
    assert started.wait(10)
    # Wait (bounded) until the call is in flight, then recycle.
    for _ in range(100):
        if pg_timeouts.busy_connections():
            break
        threading.Event().wait(0.05)
    assert pg_timeouts.recycle() >= 1
    assert finished.wait(10), "the blocked call was not freed"
    assert errors and isinstance(errors[0], psycopg.OperationalError)
