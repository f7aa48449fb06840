"""The stall watchdog: a part with work waiting that makes no progress is recycled, then ended.

Each long-running part (worker, projector, outbox) is watched by one task.
Every ``STALL_TIMEOUT_SECONDS / 4`` it reads the part's *position* (what it
has done: messages handled, events projected or published) and the *head*
(how far it should get: the store's last notification id, or the messages
handled plus the consumer lag). Work is waiting while head > position.

- Work waiting and no progress for ``STALL_TIMEOUT_SECONDS``: one ERROR log
  line ``stalled: <part> …`` saying what it is stuck on, the counter
  ``batchslot_stalls_total{part,action="recycled"}``, the gauge
  ``batchslot_stalled{part}`` set to 1, and the part's connections are
  recycled (sockets of PostgreSQL calls in flight are shut down, so a thread
  blocked in a read returns; pools are refilled; LISTEN connections and the
  projector's Redis connections are reopened).
- Still no progress for another ``STALL_TIMEOUT_SECONDS`` although the part's
  dependencies answer: a CRITICAL log line, ``batchslot_stalls_total{…,
  action="exit"}``, and the process exits with status 70 so its supervisor
  restarts it. (A thread stuck in a socket read cannot be cancelled; exiting
  is the last resort.) While a dependency does not answer at all the part
  retries on its own (logged and counted as transient failures): the
  watchdog recycles but does not exit for that, a restart would not help.

A follower standing by (its lease held by another instance,
``processes/leadership.py``) has no work of its own: its probe says so
(``Reading.standby``) and the tracker starts afresh when it leads again.

``StallTracker`` holds the decision logic with an injected clock (unit tested);
``watch`` is the asyncio loop around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from infrastructure import metrics

log = logging.getLogger("batchslot.watchdog")
EXIT_STALLED = 70  # EX_SOFTWARE: the supervisor restarts the process


class Action(enum.Enum):
    OK = "ok"
    RECYCLE = "recycle"
    EXIT = "exit"


@dataclass(frozen=True)
class Reading:
    """One look at a part: ``None`` where the probe could not tell (dependency down)."""

    position: int | None
    head: int | None
    healthy: bool = True  # its dependencies answered this time
    detail: str = ""  # what it is doing / stuck on, for the log line
    standby: bool = False  # the part runs on another instance (its lease): never stalled


@dataclass
class StallTracker:
    part: str
    timeout: float
    clock: Callable[[], float] = time.monotonic
    _position: int | None = None
    _waiting: bool = False
    _since: float | None = None  # start of the current period without progress
    _recycled_at: float | None = None
    stalled: bool = field(default=False)

    def observe(self, reading: Reading) -> Action:
        now = self.clock()
        if reading.standby:  # nothing to do here; leading again starts a fresh period
            self._position, self._waiting = None, False
            self._reset(now)
            return Action.OK
        position, head = reading.position, reading.head
        if position is not None and (self._position is None or position > self._position):
            self._position = position
            self._reset(now)
        if position is not None and head is not None:
            self._waiting = head > position
        if not self._waiting:
            self._reset(now)
            return Action.OK
        if self._since is None:
            self._since = now
        if self._recycled_at is None:
            if now - self._since >= self.timeout:
                self._recycled_at = now
                self.stalled = True
                return Action.RECYCLE
            return Action.OK
        if now - self._recycled_at >= self.timeout and reading.healthy:
            return Action.EXIT
        return Action.OK

    def stalled_for(self) -> float:
        return 0.0 if self._since is None else self.clock() - self._since

    def _reset(self, now: float) -> None:
        self._since = now
        self._recycled_at = None
        self.stalled = False


def hard_exit(code: int = EXIT_STALLED) -> None:
    """End the process now, even with threads stuck in socket reads."""
    logging.shutdown()
    os._exit(code)


async def watch(
    tracker: StallTracker,
    probe: Callable[[], Awaitable[Reading]],
    recycle: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    *,
    interval: float | None = None,
    exit_process: Callable[[], None] = hard_exit,
) -> None:
    """Watch one part until ``stop`` is set (see module docstring)."""
    tick = interval if interval is not None else max(0.25, tracker.timeout / 4)
    part = tracker.part
    metrics.STALLED.labels(part).set(0)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=tick)
        if stop.is_set():
            break
        try:
            reading = await asyncio.wait_for(probe(), timeout=max(tick, 1.0))
        except Exception as e:  # the probe's own dependency is down or silent
            reading = Reading(None, None, healthy=False, detail=f"probe failed: {type(e).__name__}")
        action = tracker.observe(reading)
        metrics.STALLED.labels(part).set(1 if tracker.stalled else 0)
        if action is Action.RECYCLE:
            metrics.STALLS.labels(part, "recycled").inc()
            log.error(
                "stalled: %s has work waiting and made no progress for %.0fs (%s); "
                "recycling its connections",
                part,
                tracker.stalled_for(),
                reading.detail,
                extra={"part": part, "position": reading.position, "head": reading.head},
            )
            try:
                await recycle()
            except Exception as e:
                log.warning("recycling %s failed: %r", part, e)
        elif action is Action.EXIT:
            metrics.STALLS.labels(part, "exit").inc()
            log.critical(
                "stalled: %s still makes no progress %.0fs after recycling its connections "
                "(%s); exiting with status %d so the supervisor restarts the process",
                part,
                tracker.stalled_for(),
                reading.detail,
                EXIT_STALLED,
                extra={"part": part, "position": reading.position, "head": reading.head},
            )
            exit_process()
            return
