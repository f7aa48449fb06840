"""What /readyz checks, per process (``readiness_checks``).

- ``postgres``: a fresh connection answers ``SELECT 1`` (every process).
- ``redis``: the read model's client answers PING (projector; worker: the sweep's index).
- ``kafka``: a fresh client bootstraps (fetches metadata) (worker, outbox).
- ``consumer``: the worker's consumer has started: assigned partitions, or
  waiting for an assignment (a group join or rebalance) — both are ready.
- ``projection_lag`` / ``outbox_lag``: stored events not yet projected /
  published, at most READYZ_MAX_LAG_EVENTS. The positions are shared by the
  replicas; on a standby (the follower's lease held by another instance) the
  lag is reported, never failed: it is the leader's to catch up, and a standby
  taken out of service would not make it faster.

Each check that talks to a server is a ``Probe``: bounded by
READYZ_PROBE_TIMEOUT_SECONDS and cached for READYZ_CACHE_SECONDS.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import psycopg
from aiokafka.client import AIOKafkaClient

from application.service import BatchService
from infrastructure.health.server import Check, CheckFn, Probe
from infrastructure.kafka.clients import client_kwargs
from infrastructure.postgres.store import conninfo
from infrastructure.postgres.timeouts import libpq_bounds
from infrastructure.redis.client import node_clients
from infrastructure.settings import Settings


def postgres_probe(settings: Settings) -> Callable[[], str]:
    timeout = settings.readyz_probe_timeout_seconds
    bounds = {
        **libpq_bounds(settings),
        "connect_timeout": max(1, math.ceil(timeout)),
        "options": f"-c statement_timeout={int(timeout * 1000)}",
    }

    def probe() -> str:
        with psycopg.connect(**conninfo(settings), **bounds, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return "answered SELECT 1"

    return probe


def redis_probe(client: Any) -> Callable[[], str]:
    """PING the server, or every primary of a Redis Cluster (each holds part of the model)."""

    def probe() -> str:
        servers = node_clients(client)
        for server in servers:
            server.ping()
        return "answered PING" if len(servers) == 1 else f"{len(servers)} primaries answered PING"

    return probe


def kafka_probe(settings: Settings) -> Callable[[], str]:
    timeout = settings.readyz_probe_timeout_seconds

    async def bootstrap() -> int:
        kwargs = {**client_kwargs(settings), "request_timeout_ms": max(1000, int(timeout * 1000))}
        client = AIOKafkaClient(**kwargs)
        try:
            await client.bootstrap()
            return len(client.cluster.brokers())
        finally:
            await client.close()

    def probe() -> str:
        brokers = asyncio.run(asyncio.wait_for(bootstrap(), timeout))
        return f"metadata from the cluster: {brokers} broker(s)"

    return probe


def consumer_check(worker: Any) -> CheckFn:
    def check() -> Check:
        assigned = worker.assigned()
        if assigned is None:
            return Check(False, "the worker's consumer has not started")
        if not assigned:
            return Check(True, "waiting for a partition assignment (group join or rebalance)")
        return Check(True, f"assigned {len(assigned)} partition(s)")

    return check


def lag_probe(
    head: Callable[[], int],
    done: Callable[[], int],
    limit: int,
    leading: Callable[[], bool] = lambda: True,
) -> Callable[[], str]:
    """Lag of a part: the store's head minus its position, failing above ``limit``
    (only where the part runs: ``leading``)."""

    def probe() -> str:
        lag = max(0, head() - done())
        if not leading():
            return f"standing by (led by another instance), {lag} events behind"
        if lag > limit:
            raise LagTooHigh(f"{lag} events behind (READYZ_MAX_LAG_EVENTS={limit})")
        return f"{lag} events behind"

    return probe


class LagTooHigh(RuntimeError):
    """A part is further behind than READYZ_MAX_LAG_EVENTS."""


def readiness_checks(
    settings: Settings,
    service: BatchService,
    *,
    view: Any | None = None,
    worker: Any | None = None,
    projector: Any | None = None,
    outbox: Any | None = None,
    sweep: bool = False,
    leads: Callable[[str], bool] = lambda _: True,
) -> dict[str, CheckFn]:
    """The checks of a process with these parts (None: not in this process); ``leads``
    says which followers this instance runs now (the others stand by)."""
    timeout, ttl = settings.readyz_probe_timeout_seconds, settings.readyz_cache_seconds

    def probe(fn: Callable[[], str]) -> CheckFn:
        return Probe(fn, timeout, ttl)

    def head() -> int:
        return int(service.recorder.max_notification_id() or 0)

    limit = settings.readyz_max_lag_events
    checks: dict[str, CheckFn] = {"postgres": probe(postgres_probe(settings))}
    if view is not None and (projector is not None or sweep):
        checks["redis"] = probe(redis_probe(view.client))
    if worker is not None or outbox is not None:
        checks["kafka"] = probe(kafka_probe(settings))
    if worker is not None:
        checks["consumer"] = consumer_check(worker)
    if projector is not None and view is not None:
        checks["projection_lag"] = probe(
            lag_probe(head, lambda: int(view.position() or 0), limit, lambda: leads("projector"))
        )
    if outbox is not None:
        checks["outbox_lag"] = probe(
            lag_probe(head, lambda: int(outbox.position()), limit, lambda: leads("outbox"))
        )
    return checks
