"""Follower leases on the real PostgreSQL (infrastructure/postgres/lease.py).

The keepers' heartbeats are driven by hand here (no thread), so a keeper that
is not called stands for a stopped process: its session stays open and idle.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg
import pytest
from pydantic import SecretStr

from infrastructure.postgres.lease import Change, LeaseKeeper, LeaseLost, preference
from infrastructure.postgres.store import conninfo
from infrastructure.settings import Settings
from tests.conftest import make_settings
from tests.support.poll import eventually
from tests.support.proxy import ProxyThread

FOLLOWERS = ("projector", "outbox", "due_index")


@pytest.fixture
def lease_settings() -> Settings:
    return make_settings(LEASE_TTL_SECONDS="1", LEASE_RETRY_SECONDS="0.1")


@pytest.fixture
def keepers(lease_settings: Settings) -> Iterator[list[LeaseKeeper]]:
    made: list[LeaseKeeper] = []
    yield made
    for keeper in made:
        keeper.close()


def keeper(
    settings: Settings, made: list[LeaseKeeper], name: str, changes: list[Change] | None = None
) -> LeaseKeeper:
    k = LeaseKeeper(
        settings, FOLLOWERS, name, on_change=(changes if changes is not None else []).append
    )
    made.append(k)
    return k


def held(k: LeaseKeeper) -> set[str]:
    return {f for f in FOLLOWERS if k.holds(f)}


def beat(ks: list[LeaseKeeper], times: int = 1, pause: float = 0.0) -> None:
    for _ in range(times):
        for k in ks:
            k.heartbeat()
        time.sleep(pause)


def test_one_instance_takes_every_lease_at_its_first_heartbeat(
    lease_settings: Settings, keepers: list[LeaseKeeper]
) -> None:
    changes: list[Change] = []
    a = keeper(lease_settings, keepers, "a", changes)
    a.heartbeat()
    assert held(a) == set(FOLLOWERS)
    assert {(c.follower, c.what) for c in changes} == {(f, "acquired") for f in FOLLOWERS}
    assert all(a.confirmed(f) for f in FOLLOWERS)
    a.confirm("outbox")  # no exception


def test_each_lease_has_one_holder_and_three_instances_share_three_followers(
    lease_settings: Settings, keepers: list[LeaseKeeper]
) -> None:
    a = keeper(lease_settings, keepers, "a")
    a.heartbeat()  # alone: takes all three
    b, c = keeper(lease_settings, keepers, "b"), keeper(lease_settings, keepers, "c")
    # Hand-overs: the runner stops the follower, then releases (done here at once).
    for _ in range(40):
        beat([a, b, c])
        for k in (a, b, c):
            for f in FOLLOWERS:
                if k.release_requested(f):
                    k.release(f)
        for f in FOLLOWERS:
            assert sum(k.holds(f) for k in (a, b, c)) <= 1, f
        if all(len(held(k)) == 1 for k in (a, b, c)):
            break
        time.sleep(0.1)
    assert [len(held(k)) for k in (a, b, c)] == [1, 1, 1]
    assert held(a) | held(b) | held(c) == set(FOLLOWERS)
    beat([a, b, c], times=10, pause=0.1)  # and it stays so
    assert [len(held(k)) for k in (a, b, c)] == [1, 1, 1]


def test_a_holder_whose_session_ends_is_taken_over_at_the_next_heartbeat(
    lease_settings: Settings, keepers: list[LeaseKeeper]
) -> None:
    a = keeper(lease_settings, keepers, "a")
    a.heartbeat()
    b = keeper(lease_settings, keepers, "b")
    b.heartbeat()
    assert held(b) == set()  # standing by
    a.close()  # as kill -9: the socket closes, the server ends the session
    changes: list[Change] = []
    b.on_change = changes.append

    def taken_over() -> bool:
        b.heartbeat()
        return held(b) == set(FOLLOWERS)

    # The server ends the closed session's backend (and its locks) a moment after the
    # socket closes: the next heartbeat after that takes over.
    eventually(taken_over, timeout=2.0, every=0.02, what="b never took over")
    assert all(c.what == "acquired" and "previous holder" in c.detail for c in changes)


def test_a_silent_holder_loses_its_leases_after_the_ttl_and_is_fenced(
    lease_settings: Settings, keepers: list[LeaseKeeper]
) -> None:
    """A stopped holder: its session stays open, but idle_session_timeout ends it
    server-side; the woken holder's fence fails."""
    a = keeper(lease_settings, keepers, "a")
    a.heartbeat()
    b = keeper(lease_settings, keepers, "b")
    started = time.monotonic()
    while held(b) != set(FOLLOWERS):  # b keeps beating, a is "stopped"
        assert time.monotonic() - started < 5, "no takeover"
        b.heartbeat()
        time.sleep(0.1)
    took = time.monotonic() - started
    assert 0.9 <= took <= 3.0, took  # the TTL (1 s) plus a heartbeat or two
    taken = b.acquired("outbox")
    assert taken is not None and 0.8 <= taken.waited <= took  # since a was last seen holding
    assert not a.confirmed("outbox")  # its last confirmation is older than TTL / 2
    with pytest.raises(LeaseLost):
        a.confirm("outbox")  # asks the server: the session is gone
    assert held(a) == set()


def test_the_confirmation_is_trusted_for_half_the_ttl_only(
    lease_settings: Settings, keepers: list[LeaseKeeper]
) -> None:
    a = keeper(lease_settings, keepers, "a")
    a.heartbeat()
    assert a.confirmed("projector")
    time.sleep(0.6)  # over TTL / 2, under the TTL: the session is still alive
    assert not a.confirmed("projector")
    a.confirm("projector")  # a round trip confirms it
    assert a.confirmed("projector")


def test_a_released_lease_goes_to_a_standby_and_the_keeper_session_is_visible(
    lease_settings: Settings, keepers: list[LeaseKeeper]
) -> None:
    a = keeper(lease_settings, keepers, "a")
    a.heartbeat()
    b = keeper(lease_settings, keepers, "b")
    b.heartbeat()
    a.release("outbox")
    b.heartbeat()
    assert b.holds("outbox") and not a.holds("outbox")
    with psycopg.connect(**conninfo(lease_settings), autocommit=True) as conn:
        names = {
            r[0]
            for r in conn.execute(
                "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s",
                ("batchslot-lease %",),
            )
        }
    assert {"batchslot-lease a", "batchslot-lease b"} <= names


def test_preference_rotates_the_followers_per_instance() -> None:
    orders = {tuple(preference(FOLLOWERS, f"host:{i}")) for i in range(30)}
    assert len({o[0] for o in orders}) == 3  # every follower is someone's first choice
    assert all(sorted(o) == sorted(FOLLOWERS) for o in orders)


def test_a_partitioned_holder_is_taken_over_after_the_ttl_and_stands_by_after_heal(
    lease_settings: Settings, keepers: list[LeaseKeeper]
) -> None:
    """The holder reaches PostgreSQL through a proxy that goes silent (packets dropped,
    the flows kept open: TCP cannot tell): the server ends the idle session itself."""
    parts = urlsplit(lease_settings.database_url.get_secret_value())
    proxy = ProxyThread(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    try:
        proxied = lease_settings.model_copy(
            update={
                "database_url": SecretStr(
                    f"postgresql://postgres@127.0.0.1:{proxy.port}{parts.path}"
                )
            }
        )
        a = keeper(proxied, keepers, "a")
        a.heartbeat()
        b = keeper(lease_settings, keepers, "b")
        b.heartbeat()
        assert held(a) == set(FOLLOWERS) and held(b) == set()
        b.start()  # b beats on its own from now on (every 0.1 s)
        proxy.partition()
        started = time.monotonic()
        while held(b) != set(FOLLOWERS):  # a is silent: its session idles, the server ends it
            assert time.monotonic() - started < 5, "no takeover"
            time.sleep(0.05)
        assert time.monotonic() - started <= 3.0  # the TTL (1 s) and a heartbeat or two
        assert not a.confirmed("outbox")
        a.heartbeat()  # no answer within its call deadline (TTL / 2): every lease given up
        assert held(a) == set()
        with pytest.raises(LeaseLost):
            a.confirm("outbox")
        proxy.heal(reset=False)  # the old flow stays stranded; new connections pass
        beat([a], times=5, pause=0.1)
        assert held(a) == set() and held(b) == set(FOLLOWERS)
    finally:
        proxy.stop()


def test_a_lease_lost_and_taken_again_is_another_acquisition(
    lease_settings: Settings, keepers: list[LeaseKeeper]
) -> None:
    """The follower run under the first acquisition must stop even though its instance
    holds the lease again (from a new session): its fence names the old generation."""
    a = keeper(lease_settings, keepers, "a")
    a.heartbeat()
    first = a.generation("outbox")
    with a._lock:
        assert a._conn is not None
        a._conn.close()  # the session ends (locks released) without the keeper noticing
    a.heartbeat()  # a new session: lost, then taken again
    assert a.holds("outbox") and a.generation("outbox") == first + 1
    assert a.confirmed("outbox") and not a.confirmed("outbox", first)
    with pytest.raises(LeaseLost):
        a.confirm("outbox", first)
    a.release("outbox", first)  # not that acquisition any more: nothing released
    assert a.holds("outbox")
