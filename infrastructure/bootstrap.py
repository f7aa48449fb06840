"""The one wiring place: every client is built here, never at import time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from application.service import BatchService, utc_now
from infrastructure.postgres.snapshots import prune_snapshots
from infrastructure.postgres.store import ddl_lock, ensure_database, event_store_env
from infrastructure.settings import Settings, load_settings


@dataclass
class Bootstrap:
    settings: Settings

    @classmethod
    def from_env(cls) -> Bootstrap:
        return cls(load_settings())

    def event_store_env(self) -> dict[str, str]:
        return event_store_env(self.settings)

    def batch_service(self, clock: Callable[[], datetime] = utc_now, **kwargs: Any) -> BatchService:
        ensure_database(self.settings)
        with ddl_lock(self.settings):  # the library creates its tables (CREATE_TABLE=y)
            return BatchService(
                env=self.event_store_env(),
                clock=clock,
                timeout_seconds=self.settings.batch_timeout_seconds,
                pending_ttl_seconds=self.settings.pending_ttl_seconds,
                **{
                    "cache_size": self.settings.aggregate_cache_size,
                    "prune_snapshots": prune_snapshots,
                    **kwargs,
                },
            )
