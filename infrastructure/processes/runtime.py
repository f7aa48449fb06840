"""Long-running processes: worker, projector, outbox, or all of them in one.

One asyncio loop per process; SIGINT/SIGTERM set the stop event, every part
finishes what it holds (the worker commits after its poll is recorded) and the
process exits 0. If any part fails, the others are stopped and the error is
raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from application.service import BatchService
from infrastructure import metrics
from infrastructure.bootstrap import Bootstrap
from infrastructure.health.checks import readiness_checks
from infrastructure.health.metering import report_pending_age
from infrastructure.health.server import start_health
from infrastructure.kafka.local_broker import BrokerUnavailable, LocalBroker, answers, first_address
from infrastructure.postgres import timeouts as pg_timeouts
from infrastructure.postgres.store import StoreMissing
from infrastructure.processes.outbox import Outbox
from infrastructure.processes.projector import Projector
from infrastructure.processes.sweep import run_sweep
from infrastructure.processes.tasks import until_one_fails
from infrastructure.processes.watchdog import Reading, StallTracker, watch
from infrastructure.processes.worker import Worker
from infrastructure.redis.view import RedisSlotView
from infrastructure.settings import Settings
from infrastructure.transient import StartupTimeout, is_transient, where

BLOCKING_THREADS = 16
GIL_SWITCH_SECONDS = 0.0005

log = logging.getLogger("batchslot.runtime")
T = TypeVar("T")


@dataclass(frozen=True)
class Parts:
    worker: bool = False
    projector: bool = False
    outbox: bool = False
    sweep: bool = False

    @property
    def needs_kafka(self) -> bool:
        return self.worker or self.outbox


ALL = Parts(worker=True, projector=True, outbox=True, sweep=True)


def local_broker_if_needed(settings: Settings) -> LocalBroker | None:
    """Start the local broker when no address was given and nothing answers locally."""
    if answers(settings.kafka_bootstrap_servers):
        return None
    if settings.kafka_bootstrap_explicit:
        raise BrokerUnavailable(
            f"KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers} does not answer"
        )
    host, port = first_address(settings.kafka_bootstrap_servers)
    log.info("starting the local Kafka-protocol broker", extra={"address": f"{host}:{port}"})
    return LocalBroker(port=port, host=host).start()


async def serve(settings: Settings, parts: Parts, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    # Every blocking call (the worker's append, each follower's reads and writes, the
    # leases) runs in the default executor; its default size (cores + 4) queues them
    # on a small machine, and followers waiting for one shared read hold a thread each.
    loop.set_default_executor(ThreadPoolExecutor(BLOCKING_THREADS, thread_name_prefix="blocking"))
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    health = await start_health(settings, stop)  # /metrics, /healthz, /readyz
    # One container: one service (one connection pool), one Redis client for every part.
    container = Bootstrap(settings, on_conflict=metrics.CONFLICTS.inc)
    if parts.needs_kafka:
        await _when_available("Kafka", container.kafka.ensure_topics, stop, settings, bounded=True)
    try:
        service = await _when_available(
            "PostgreSQL", lambda: asyncio.to_thread(lambda: container.service), stop, settings
        )
        # A cluster client reads the topology when built: a cluster still forming is waited for.
        # The projector's Redis is asked once (a wrong database or a server that is not
        # Redis fails the start in one line); the other parts only report on it.
        view = await _when_available(
            "Redis",
            lambda: asyncio.to_thread(lambda: _asked(container.view, parts.projector)),
            stop,
            settings,
        )
        outbox = container.outbox() if parts.outbox else None
        jobs: list[Coroutine[Any, Any, None]] = [_report_lag(service, view, outbox, stop)]
        # The followers of the store run under leases: one instance each, the others stand
        # by (processes/leadership.py); a single instance leads them all at once.
        followers: dict[str, Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = {}
        if outbox is not None:
            followers["outbox"] = outbox.run
        worker: Worker | None = None
        if parts.worker:
            worker = container.worker()
            jobs.append(worker.run(stop))
            jobs.append(_watch_worker(worker, settings, stop))
        if parts.sweep:
            # The sweep reads the due-batch index in PostgreSQL, kept up to date right here.
            index = await asyncio.to_thread(lambda: container.due_index)
            followers["due_index"] = container.due_follower().run
            jobs.append(run_sweep(service, index, settings.sweep_interval_seconds, stop))
            jobs.append(
                report_pending_age(
                    index, service.clock, settings.pending_age_interval_seconds, stop
                )
            )
        projector: Projector | None = None
        if parts.projector:
            projector = container.projector()
            followers["projector"] = projector.serve
        leadership = container.leadership(list(followers))
        if followers:
            jobs.append(leadership.run(followers, stop))
        if outbox is not None:
            jobs.append(_watch_outbox(outbox, service, settings, stop, leadership.leads))
        if projector is not None:
            jobs.append(
                _watch_projector_progress(projector, service, settings, stop, leadership.leads)
            )
        health.ready_with(
            readiness_checks(
                settings,
                service,
                view=view,
                worker=worker,
                projector=projector,
                outbox=outbox,
                sweep=parts.sweep,
                leads=leadership.leads,
            )
        )
        log.info("service started", extra={"parts": vars(parts), "settings": settings.redacted()})
        await until_one_fails([asyncio.create_task(job) for job in jobs], stop)
    finally:
        container.close()
        log.info("service stopped")


async def _when_available(
    name: str,
    attempt: Callable[[], Awaitable[T]],
    stop: asyncio.Event,
    settings: Settings,
    *,
    bounded: bool = False,
) -> T:
    """Start-up: retry a dependency that is restarting (bounded), then give up loudly.

    A failure that is not transient (a store that is not initialised, a Redis
    database out of range, a server that is not Redis) is raised at once.
    ``bounded``: each attempt is also cut at the deadline (a Kafka client waits a
    whole request timeout on a listener that accepts and never answers).
    """
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + settings.startup_timeout_seconds, 0.5
    while True:
        try:
            bound = max(0.5, deadline - loop.time()) if bounded else None
            return await _unless_stopped(attempt(), stop, bound, name)
        except StoppedBeforeStart:
            raise
        except Exception as e:
            if stop.is_set() or not is_transient(e) or isinstance(e, StoreMissing):
                raise
            if loop.time() + delay > deadline:
                if isinstance(e, TimeoutError):
                    raise StartupTimeout(
                        f"{where(settings, name)} did not answer within "
                        f"STARTUP_TIMEOUT_SECONDS={settings.startup_timeout_seconds:g}: "
                        f"is {name} running there?"
                    ) from None
                raise
            log.warning(
                f"{where(settings, name)} not available yet; retrying",
                extra={"error": repr(e)[:200]},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            if stop.is_set():
                raise StoppedBeforeStart(f"stopped while waiting for {name}") from e
            delay = min(delay * 2, 5.0)


class StoppedBeforeStart(Exception):  # not an error: SIGTERM during start-up
    """SIGINT/SIGTERM arrived while a dependency was still being waited for."""


async def _unless_stopped(
    attempt: Awaitable[T], stop: asyncio.Event, timeout: float | None, name: str
) -> T:
    """``attempt``, abandoned when ``stop`` is set (StoppedBeforeStart) or after ``timeout``
    (TimeoutError): a silent server must not hold a stopping process."""
    task = asyncio.ensure_future(attempt)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(task, timeout=1.0)
    if stop.is_set():
        raise StoppedBeforeStart(f"stopped while waiting for {name}")
    raise TimeoutError(f"{name} did not answer in {timeout:g} s")


def _asked(view: RedisSlotView, ask: bool) -> RedisSlotView:
    if ask:
        view.position()
    return view


async def _report_lag(
    service: BatchService, view: RedisSlotView, outbox: Outbox | None, stop: asyncio.Event
) -> None:
    """Keep the lag gauges fresh (projection lag from Redis, outbox lag from PostgreSQL)."""
    while not stop.is_set():
        try:
            head = await asyncio.to_thread(service.recorder.max_notification_id) or 0
            projected = await asyncio.to_thread(view.position) or 0
            metrics.PROJECTION_LAG.set(max(0, head - projected))
            if outbox is not None:
                published = await asyncio.to_thread(outbox.position)
                metrics.OUTBOX_LAG.set(max(0, head - published))
        except Exception as e:  # a gauge must never stop the service
            log.debug("lag probe failed", extra={"error": repr(e)[:200]})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=2.0)


# ------------------------------------------------------------ stall watchdogs


async def _store_head(service: BatchService) -> int:
    return await asyncio.to_thread(service.recorder.max_notification_id) or 0


async def _watch_worker(worker: Worker, settings: Settings, stop: asyncio.Event) -> None:
    async def probe() -> Reading:
        lag = worker.lag()
        if worker.in_hand:
            what = f"a poll of {worker.in_hand} messages in hand (PostgreSQL or Kafka call)"
        else:
            what = f"waiting for Kafka records, consumer lag {lag}"
        # Retries inside the store's append hide a failing PostgreSQL from the
        # worker: a recent call timeout also means "a dependency is down".
        recent_timeout = pg_timeouts.seconds_since_timeout() < settings.stall_timeout_seconds
        return Reading(
            worker.handled,
            worker.handled + worker.in_hand + lag,
            healthy=not worker.retrying and not recent_timeout,
            detail=what,
        )

    async def recycle() -> None:
        # Frees a call blocked on a silent PostgreSQL connection. Kafka needs no lever:
        # every request is bounded (KAFKA_REQUEST_TIMEOUT_MS) and aiokafka reconnects.
        pg_timeouts.recycle()

    tracker = StallTracker("worker", settings.stall_timeout_seconds)
    await watch(tracker, probe, recycle, stop)


async def _watch_projector_progress(
    projector: Projector,
    service: BatchService,
    settings: Settings,
    stop: asyncio.Event,
    leads: Callable[[str], bool] = lambda _: True,
) -> None:
    await _watch_follower(
        "projector",
        lambda: projector.applied,
        "projected",
        "PostgreSQL (notifications or a read) or Redis",
        projector.recycle,
        service,
        settings,
        stop,
        lambda: leads("projector"),
    )


async def _watch_outbox(
    outbox: Outbox,
    service: BatchService,
    settings: Settings,
    stop: asyncio.Event,
    leads: Callable[[str], bool] = lambda _: True,
) -> None:
    await _watch_follower(
        "outbox",
        lambda: outbox.published,
        "published",
        "PostgreSQL or a Kafka acknowledgement",
        outbox.recycle,
        service,
        settings,
        stop,
        lambda: leads("outbox"),
    )


async def _watch_follower(
    part: str,
    position_of: Callable[[], int | None],
    verb: str,
    waiting_on: str,
    recycle: Callable[[], Awaitable[None]],
    service: BatchService,
    settings: Settings,
    stop: asyncio.Event,
    leading: Callable[[], bool] = lambda: True,
) -> None:
    """The stall watchdog of a follower of the store: its position against the head
    (a standby, whose follower runs on another instance, is never stalled)."""

    async def probe() -> Reading:
        if not leading():
            return Reading(None, None, standby=True, detail="standing by (led elsewhere)")
        head = await _store_head(service)
        position = position_of()
        return Reading(
            position,
            head,
            detail=f"{verb} up to {position}, store head {head}: waiting on {waiting_on}",
        )

    await watch(StallTracker(part, settings.stall_timeout_seconds), probe, recycle, stop)
