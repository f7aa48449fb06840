"""The stall watchdog's decisions, with an injected clock."""

from __future__ import annotations

import asyncio

from infrastructure import metrics
from infrastructure.processes.watchdog import Action, Reading, StallTracker, watch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tracker(timeout: float = 10.0) -> tuple[StallTracker, Clock]:
    clock = Clock()
    return StallTracker("worker", timeout, clock=clock), clock


def test_no_work_waiting_is_never_a_stall() -> None:
    t, clock = tracker()
    for _ in range(10):
        assert t.observe(Reading(5, 5)) is Action.OK
        clock.now += 100
    assert not t.stalled


def test_progress_resets_the_clock() -> None:
    t, clock = tracker()
    for position in range(10):
        assert t.observe(Reading(position, position + 50)) is Action.OK
        clock.now += 9
    assert not t.stalled


def test_work_waiting_without_progress_recycles_then_exits() -> None:
    t, clock = tracker()
    assert t.observe(Reading(3, 10)) is Action.OK
    clock.now += 9.9
    assert t.observe(Reading(3, 10)) is Action.OK
    clock.now += 0.1
    assert t.observe(Reading(3, 10)) is Action.RECYCLE
    assert t.stalled
    clock.now += 5
    assert t.observe(Reading(3, 12)) is Action.OK  # recycled once, give it time
    clock.now += 5
    assert t.observe(Reading(3, 12)) is Action.EXIT


def test_a_standby_is_never_stalled_and_leading_again_starts_afresh() -> None:
    """A follower whose lease another instance holds: the store's head moves on
    without it, which is no stall; when it leads again it has the full timeout."""
    t, clock = tracker()
    assert t.observe(Reading(30, 100)) is Action.OK  # leading, behind
    clock.now += 9
    for _ in range(10):  # lease lost: standing by for long
        assert t.observe(Reading(None, None, standby=True)) is Action.OK
        clock.now += 100
    assert not t.stalled
    assert t.observe(Reading(20, 500)) is Action.OK  # leading again, from an older position
    clock.now += 9.9
    assert t.observe(Reading(20, 500)) is Action.OK
    clock.now += 0.1
    assert t.observe(Reading(20, 500)) is Action.RECYCLE


def test_progress_after_a_recycle_clears_the_stall() -> None:
    t, clock = tracker()
    t.observe(Reading(3, 10))
    clock.now += 10
    assert t.observe(Reading(3, 10)) is Action.RECYCLE
    clock.now += 1
    assert t.observe(Reading(4, 10)) is Action.OK
    assert not t.stalled
    clock.now += 9.5
    assert t.observe(Reading(4, 10)) is Action.OK  # a new period started at the progress


def test_a_dependency_that_does_not_answer_is_recycled_but_not_a_reason_to_exit() -> None:
    t, clock = tracker()
    t.observe(Reading(3, 10))
    clock.now += 10
    assert t.observe(Reading(None, None, healthy=False)) is Action.RECYCLE  # still waiting
    for _ in range(5):
        clock.now += 10
        assert t.observe(Reading(None, None, healthy=False)) is Action.OK
    assert t.observe(Reading(3, 10, healthy=True)) is Action.EXIT


def test_watch_logs_counts_recycles_and_exits(caplog: object) -> None:
    clock = Clock()
    t = StallTracker("outbox", 1.0, clock=clock)
    recycled: list[float] = []
    exited: list[float] = []
    before = metrics.STALLS.labels("outbox", "recycled")._value.get()

    async def probe() -> Reading:
        clock.now += 0.5
        return Reading(1, 9, detail="published up to 1, store head 9")

    async def recycle() -> None:
        recycled.append(clock.now)

    async def main() -> None:
        stop = asyncio.Event()

        def exit_process() -> None:
            exited.append(clock.now)
            stop.set()

        await asyncio.wait_for(
            watch(t, probe, recycle, stop, interval=0.01, exit_process=exit_process), 10
        )

    asyncio.run(main())
    assert len(recycled) == 1 and len(exited) == 1
    assert exited[0] - recycled[0] >= 1.0
    assert metrics.STALLS.labels("outbox", "recycled")._value.get() == before + 1
    messages = [r.getMessage() for r in caplog.records]  # type: ignore[attr-defined]
    assert any(m.startswith("stalled: outbox has work waiting") for m in messages)
    assert any("exiting with status 70" in m for m in messages)
