"""Run each follower of the store on one instance at a time: the leader of its lease.

``Leadership`` owns one ``LeaseKeeper`` (``infrastructure/postgres/lease.py``)
for the followers of this process (projector, outbox, due-batch index) and one
task per follower that waits, as a standby, until the keeper holds its lease,
then runs the follower loop until one of:

- ``stop`` is set: the loop finishes its page and returns (as without leases);
- the lease is lost (the keeper's session ended, or the fence found it gone):
  the follower task is cancelled at once, the instance stands by again;
- the keeper asks to hand the lease over (this instance holds more than its
  fair share while a peer holds less): the loop is stopped like at ``stop``
  (the page finishes and its position is recorded), then the lease is released
  and a peer takes it within a heartbeat.

The follower's task runs with ``FENCE`` set to its lease, so the shared loop
(``follower.py``) checks the lease before every page and the outbox before it
records a position. A follower that fails stops the process as before.

Visible: ``batchslot_follower_leader{follower}`` (1 leading, 0 standing by),
``batchslot_follower_takeovers_total{follower}`` and
``batchslot_follower_takeover_seconds{follower}`` (from the previous
holder's last sign of life to the takeover: about how long the follower ran
nowhere), ``batchslot_follower_lease_losses_total
{follower,reason}`` and a log line on each takeover, loss and hand-over.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from infrastructure import metrics
from infrastructure.postgres.lease import Change, LeaseKeeper, LeaseLost
from infrastructure.processes.follower import FENCE
from infrastructure.processes.tasks import until_one_fails

log = logging.getLogger("batchslot.leadership")
Run = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
HANDOVER_TIMEOUT = 30.0  # seconds a follower may take to finish its page when handing over


def instance_id() -> str:
    """This process's name among the replicas (host, pid and a random suffix)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class _Fence:
    keeper: LeaseKeeper
    follower: str
    generation: int  # the acquisition the follower runs under

    def fresh(self) -> bool:
        return self.keeper.confirmed(self.follower, self.generation)

    def confirm(self) -> None:
        self.keeper.confirm(self.follower, self.generation)


class Leadership:
    """Runs followers under leases (see module docstring)."""

    def __init__(self, keeper: LeaseKeeper) -> None:
        self.keeper = keeper
        self._changed: dict[str, asyncio.Event] = {}
        self._leading: set[str] = set()
        self._last_change: dict[str, Change] = {}

    def leads(self, follower: str) -> bool:
        """True while this instance runs ``follower`` (False: standing by)."""
        return follower in self._leading

    async def run(self, followers: Mapping[str, Run], stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        for name in followers:
            self._changed[name] = asyncio.Event()
            metrics.FOLLOWER_LEADER.labels(name).set(0)

        def on_change(change: Change) -> None:  # from the keeper's thread
            def note() -> None:
                self._last_change[change.follower] = change
                self._changed[change.follower].set()

            with contextlib.suppress(RuntimeError):  # the loop has already finished
                loop.call_soon_threadsafe(note)

        self.keeper.on_change = on_change
        self.keeper.start()
        log.info(
            "standing by for the followers' leases",
            extra={"instance": self.keeper.instance, "followers": list(self.keeper.order)},
        )
        tasks = [
            asyncio.create_task(self._lead(name, run, stop)) for name, run in followers.items()
        ]
        try:
            await until_one_fails(tasks, stop)
        finally:
            await asyncio.to_thread(self.keeper.close)
            for name in followers:
                metrics.FOLLOWER_LEADER.labels(name).set(0)

    async def _wait_change(
        self, name: str, stop: asyncio.Event, *also: asyncio.Future[Any]
    ) -> None:
        changed = self._changed[name]
        waiters: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(changed.wait()),
        ]
        try:
            await asyncio.wait([*waiters, *also], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        changed.clear()

    async def _lead(self, name: str, run: Run, stop: asyncio.Event) -> None:
        keeper = self.keeper
        while not stop.is_set():
            if not keeper.holds(name):
                await self._wait_change(name, stop)
                continue
            change = keeper.acquired(name)
            waited = change.waited if change is not None else 0.0
            metrics.FOLLOWER_TAKEOVERS.labels(name).inc()
            metrics.FOLLOWER_TAKEOVER_SECONDS.labels(name).observe(waited)
            log.info(
                "leading %s (lease taken %.1fs after its previous holder last showed life; %s)",
                name,
                waited,
                change.detail if change is not None else "",
                extra={"follower": name, "instance": keeper.instance, "peers": keeper.peers},
            )
            await self._run_while_held(name, run, stop)

    async def _run_while_held(self, name: str, run: Run, stop: asyncio.Event) -> None:
        keeper = self.keeper
        follower_stop = asyncio.Event()
        generation = keeper.generation(name)
        context = contextvars.copy_context()
        context.run(FENCE.set, _Fence(keeper, name, generation))
        task = asyncio.create_task(run(follower_stop), name=f"follower-{name}", context=context)
        self._leading.add(name)
        metrics.FOLLOWER_LEADER.labels(name).set(1)
        reason, started = "", time.monotonic()
        try:
            while not task.done():
                await self._wait_change(name, stop, task)
                if task.done():
                    break
                if stop.is_set():
                    follower_stop.set()
                    await asyncio.wait([task])
                    break
                if not keeper.holds(name, generation):  # (lost, perhaps taken again since)
                    reason = "lost"
                    task.cancel()
                    await asyncio.wait([task])
                    break
                if keeper.release_requested(name):
                    reason = "released"
                    follower_stop.set()
                    await asyncio.wait([task], timeout=HANDOVER_TIMEOUT)
                    if not task.done():
                        task.cancel()
                        await asyncio.wait([task])
                    break
        finally:
            self._leading.discard(name)
            metrics.FOLLOWER_LEADER.labels(name).set(0)
            if not task.done():  # we are being cancelled ourselves
                task.cancel()
        error = None if task.cancelled() else task.exception()
        if isinstance(error, LeaseLost):
            reason = "fenced"
        elif error is not None:
            raise error
        elif not reason and not stop.is_set():
            reason = "released"  # the loop returned on its own: let another instance run it
        if reason and reason != "lost":
            await asyncio.to_thread(keeper.release, name, generation)
        if reason:
            metrics.FOLLOWER_LEASE_LOSSES.labels(name, reason).inc()
            change = self._last_change.get(name)
            why = change.detail if change is not None and change.what != "acquired" else ""
            level = logging.INFO if reason == "released" else logging.WARNING
            log.log(
                level,
                "standing by for %s: lease %s after leading it %.1fs (%s)",
                name,
                reason,
                time.monotonic() - started,
                why or str(error or "") or "the follower returned",
                extra={"follower": name, "instance": keeper.instance},
            )
