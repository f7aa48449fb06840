"""The one wiring place: every service, client and pool is built here, once, never at import.

``Bootstrap(settings)`` is a container: ``service`` (the ``BatchService``, one
PostgreSQL pool), ``view`` (the Redis read model, one Redis client),
``due_index`` (the due-batch index beside the store) and ``kafka`` (the
builders of aiokafka clients) are built on first use and kept; the
long-running processes (``projector()``, ``outbox()``, ``worker()``,
``due_follower()``) are built from them, each handed its collaborators (none
builds a container or imports this module: the wiring goes one way, see
``tests/unit/test_layering.py``), and ``leadership(followers)`` runs
them under leases (one instance per follower per store). ``close()`` closes
what it built, in reverse order, and nothing it was given. ``batch_service()`` builds a further,
separate service (tests use several "instances" at once). ``tracing`` (the
tracer provider, ``infrastructure/tracing.py``) is built first, from the
settings, and shut down last (its buffered spans flushed); off unless
configured.

Creation is explicit, and the container's (the processes create nothing):
``create`` (default ``DATABASE_AUTO_CREATE``) lets it create the database,
schema and tables of what it builds, under the DDL lock, as the long-running
processes need on start (the service's with the service, the due index's with
the index, the outbox's before it builds the outbox); without it (every other
batchctl command) it creates nothing and a missing one is ``StoreMissing``.
``create_store()`` (``batchctl init``) creates everything the store needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from application.service import BatchService, utc_now
from infrastructure.kafka.clients import KafkaClients
from infrastructure.postgres.due_index import DUE_TABLE, DueIndex
from infrastructure.postgres.due_index import TRACKING_TABLE as DUE_TRACKING_TABLE
from infrastructure.postgres.listen import Listener, SharedListener, Subscription
from infrastructure.postgres.snapshots import prune_snapshots
from infrastructure.postgres.store import (
    ddl_lock,
    ensure_database,
    event_store_env,
    require_store,
    store_tables,
)
from infrastructure.redis.view import RedisSlotView
from infrastructure.settings import Settings, load_settings
from infrastructure.tracing import Tracing, build_tracing

if TYPE_CHECKING:
    from infrastructure.processes.due_index import DueIndexFollower
    from infrastructure.processes.leadership import Leadership
    from infrastructure.processes.outbox import Outbox
    from infrastructure.processes.projector import Projector
    from infrastructure.processes.worker import Worker

# The library's tables for BatchService: its events and its snapshots.
SERVICE_TABLES = ("batchservice_events", "batchservice_snapshots")


class Bootstrap:
    def __init__(
        self,
        settings: Settings,
        *,
        service: BatchService | None = None,
        view: RedisSlotView | None = None,
        tracing: Tracing | None = None,
        create: bool | None = None,
        **service_options: Any,
    ) -> None:
        self.settings = settings
        self.create = settings.database_auto_create if create is None else create
        self._service = service
        self._view = view
        self._tracing = tracing
        self._due_index: DueIndex | None = None
        self._listeners: SharedListener | None = None
        self._service_options = service_options
        self._closers: list[Callable[[], None]] = []
        self.kafka = KafkaClients(settings)

    @classmethod
    def from_env(cls) -> Bootstrap:
        return cls(load_settings())

    def __enter__(self) -> Bootstrap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close what this container built (last built, first closed)."""
        while self._closers:
            self._closers.pop()()

    # ------------------------------------------------------------ builders

    @property
    def tracing(self) -> Tracing:
        """The tracer provider the settings ask for (built once; off: no spans)."""
        if self._tracing is None:
            tracing = build_tracing(self.settings)
            self._tracing = tracing
            self._closers.append(self._forget_tracing)
        return self._tracing

    def _forget_tracing(self) -> None:
        tracing, self._tracing = self._tracing, None
        if tracing is not None:
            tracing.shutdown()

    def event_store_env(self) -> dict[str, str]:
        return event_store_env(self.settings, create=self.create)

    def batch_service(self, clock: Callable[[], datetime] = utc_now, **kwargs: Any) -> BatchService:
        """A new service with its own pool (the caller closes it); see ``service``.

        With ``create`` the database, schema and the library's tables are created
        if missing; without, their absence is ``StoreMissing`` and nothing is created.
        """
        tracer = self.tracing.tracer

        def build() -> BatchService:
            return BatchService(
                env=self.event_store_env(),
                clock=clock,
                timeout_seconds=self.settings.batch_timeout_seconds,
                pending_ttl_seconds=self.settings.pending_ttl_seconds,
                **{
                    "cache_size": self.settings.aggregate_cache_size,
                    "prune_snapshots": prune_snapshots,
                    "tracer": tracer,
                    **kwargs,
                },
            )

        if not self.create:
            require_store(self.settings, SERVICE_TABLES)
            return build()
        ensure_database(self.settings)
        with ddl_lock(self.settings):  # the library creates its tables (CREATE_TABLE=y)
            return build()

    def create_store(self) -> list[str]:
        """Create (idempotently, under the DDL lock) the database, the schema and every
        table the service and its processes use; return the tables now there."""
        from infrastructure.postgres.redrives import RedriveLog

        self.create = True
        self.service  # noqa: B018 - the database, schema, events and snapshots
        self.due_index  # noqa: B018 - its tables and position row
        self._outbox_tables()
        with RedriveLog(self.settings) as redrives:
            redrives.create()
        return store_tables(self.settings)

    @property
    def service(self) -> BatchService:
        """The event store's application (built once)."""
        if self._service is None:
            service = self.batch_service(**self._service_options)
            self._service = service
            self._closers.append(self._forget_service)
        return self._service

    def _forget_service(self) -> None:
        service, self._service = self._service, None
        if service is not None:
            service.close()

    @property
    def view(self) -> RedisSlotView:
        """The Redis read model (one client, built once)."""
        if self._view is None:
            view = RedisSlotView.from_settings(self.settings)
            self._view = view
            self._closers.append(self._forget_view)
        return self._view

    def _forget_view(self) -> None:
        view, self._view = self._view, None
        if view is not None:
            view.close()

    @property
    def due_index(self) -> DueIndex:
        """The due-batch index beside the store (its tables created once, under the DDL lock)."""
        if self._due_index is None:
            service = self.service
            index = DueIndex(service.recorder.datastore, service.name)  # type: ignore[attr-defined]
            if self.create:
                with ddl_lock(self.settings):
                    index.create_table()
            else:
                require_store(self.settings, (DUE_TABLE, DUE_TRACKING_TABLE))
            self._due_index = index
        return self._due_index

    def _outbox_tables(self) -> None:
        """The outbox's position and parking tables: with ``create`` made if missing, under
        the DDL lock (processes starting at once: one creates them); else checked."""
        from infrastructure.processes.outbox import OUTBOX_TABLES, create_outbox_tables

        service = self.service
        if self.create:
            with ddl_lock(self.settings):
                create_outbox_tables(service)
        else:
            require_store(self.settings, OUTBOX_TABLES)

    def listener(self) -> Subscription:
        """A follower's wake-ups: a new subscription to the container's one LISTEN
        connection on the events table's channel (its follower closes it)."""
        if self._listeners is None:
            channel: str = self.service.recorder.channel_name  # type: ignore[attr-defined]
            self._listeners = SharedListener(lambda: Listener(self.settings, channel))
        return self._listeners.subscribe()

    # ----------------------------------------------------------- processes

    def projector(self, **options: Any) -> Projector:
        from infrastructure.processes.projector import Projector

        return Projector(
            self.settings,
            service=self.service,
            view=self.view,
            listener=self.listener,
            tracing=self.tracing,
            **options,
        )

    def outbox(self, **options: Any) -> Outbox:
        from infrastructure.processes.outbox import Outbox

        self._outbox_tables()  # the store's set-up: the outbox itself creates nothing
        return Outbox(
            self.settings,
            self.service,
            kafka=self.kafka,
            tracing=self.tracing,
            listener=self.listener,
            **options,
        )

    def worker(self, **options: Any) -> Worker:
        from infrastructure.processes.worker import Worker

        return Worker(
            self.settings, self.service, kafka=self.kafka, tracing=self.tracing, **options
        )

    def due_follower(self, **options: Any) -> DueIndexFollower:
        from infrastructure.processes.due_index import DueIndexFollower

        return DueIndexFollower(self.service, self.due_index, self.listener(), **options)

    def leadership(self, followers: Sequence[str], instance: str | None = None) -> Leadership:
        """The leases of this process on ``followers`` (one keeper connection; given up
        when the leadership's run ends)."""
        from infrastructure.postgres.lease import LeaseKeeper
        from infrastructure.processes.leadership import Leadership, instance_id

        return Leadership(LeaseKeeper(self.settings, followers, instance or instance_id()))
