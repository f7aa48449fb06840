"""Followers run under leases (infrastructure/processes/leadership.py), real PostgreSQL.

Two "instances" in one event loop, each with its own keeper session; the
followers are stand-ins that record where they run and check their fence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from prometheus_client import REGISTRY

from infrastructure.postgres.lease import LeaseKeeper
from infrastructure.processes.follower import check_fence
from infrastructure.processes.leadership import Leadership
from infrastructure.settings import Settings
from tests.conftest import make_settings
from tests.support.poll import eventually_async

FOLLOWERS = ("projector", "outbox", "due_index")


@pytest.fixture
def lease_settings() -> Settings:
    return make_settings(LEASE_TTL_SECONDS="1", LEASE_RETRY_SECONDS="0.1")


class Instance:
    def __init__(self, settings: Settings, name: str, running: dict[str, set[str]]) -> None:
        self.name = name
        self.leadership = Leadership(LeaseKeeper(settings, FOLLOWERS, name))
        self.running = running
        self.stop = asyncio.Event()
        self.fenced_ok = 0

    def follower(self, follower: str) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
        async def run(stop: asyncio.Event) -> None:
            self.running.setdefault(follower, set()).add(self.name)
            try:
                while not stop.is_set():
                    await asyncio.to_thread(check_fence)  # as the outbox does before a write
                    self.fenced_ok += 1
                    await asyncio.sleep(0.05)
            finally:
                self.running[follower].discard(self.name)

        return run

    def start(self) -> asyncio.Task[None]:
        followers = {f: self.follower(f) for f in FOLLOWERS}
        return asyncio.create_task(self.leadership.run(followers, self.stop))

    def leads(self) -> set[str]:
        return {f for f in FOLLOWERS if self.leadership.leads(f)}


def losses(reason: str) -> float:
    return sum(
        REGISTRY.get_sample_value(
            "batchslot_follower_lease_losses_total", {"follower": f, "reason": reason}
        )
        or 0.0
        for f in FOLLOWERS
    )


async def until(check: Callable[[], bool], what: str, bound: float = 10.0) -> None:
    await eventually_async(check, bound, every=0.02, what=what)


def test_each_follower_runs_on_one_instance_spreads_and_moves_when_one_stops(
    lease_settings: Settings,
) -> None:
    async def main() -> None:
        running: dict[str, set[str]] = {}
        a, b = Instance(lease_settings, "a", running), Instance(lease_settings, "b", running)
        task_a = a.start()
        await until(lambda: a.leads() == set(FOLLOWERS), "a alone leads all three")
        task_b = b.start()
        # Two peers: fair share 2; a hands one over (its follower stops first).
        await until(lambda: len(b.leads()) == 1 and len(a.leads()) == 2, "spread over two")
        for _ in range(50):  # never two runners of one follower
            assert all(len(where) <= 1 for where in running.values()), running
            await asyncio.sleep(0.02)
        assert {f for f, where in running.items() if where} == set(FOLLOWERS)
        assert a.fenced_ok and b.fenced_ok  # the fences passed while they led
        a.stop.set()  # a leaves (SIGTERM): its session ends, b takes everything
        await task_a
        await until(lambda: b.leads() == set(FOLLOWERS), "b leads all three", bound=3)
        assert all(where == {"b"} for where in running.values()), running
        b.stop.set()
        await task_b
        assert not any(running.values())

    asyncio.run(main())


def test_a_follower_whose_lease_is_lost_is_cancelled_and_the_instance_stands_by(
    lease_settings: Settings,
) -> None:
    async def main() -> None:
        running: dict[str, set[str]] = {}
        a, b = Instance(lease_settings, "a", running), Instance(lease_settings, "b", running)
        task_a = a.start()
        await until(lambda: a.leads() == set(FOLLOWERS), "a leads all three")
        task_b = b.start()
        await until(lambda: len(b.leads()) == 1, "b leads one")
        # a's lease session dies (as if the server ended it): its followers stop at once,
        # then a competes again from a new session. Either the keeper's heartbeat notices
        # first ("lost": the follower is cancelled) or a follower's own fence check does
        # ("fenced": it stops with LeaseLost); under load either can win the race.
        lost_before = losses("lost") + losses("fenced")
        keeper = a.leadership.keeper
        with keeper._lock:
            assert keeper._conn is not None
            keeper._conn.close()
        await until(
            lambda: losses("lost") + losses("fenced") >= lost_before + 2, "a's two followers lost"
        )
        await until(lambda: all(len(w) == 1 for w in running.values()), "one runner each")
        assert len(a.leads()) + len(b.leads()) == 3
        a.stop.set()
        b.stop.set()
        await asyncio.gather(task_a, task_b)

    asyncio.run(main())
