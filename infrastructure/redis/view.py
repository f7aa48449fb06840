"""The Redis slot view (CONTRACT §4): an eventsourcing ``TrackingRecorder``.

Every event is applied by one Lua script (infrastructure/redis/scripts.py)
that writes the batch's keys, its sweep-index entries and the projection
position atomically, guarded by the batch's version: a re-delivered or
replayed event changes nothing. Many events go in one pipelined round trip.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Set
from datetime import datetime
from typing import Any, cast

import redis
from eventsourcing.persistence import IntegrityError, Tracking, TrackingRecorder
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from infrastructure.redis import scripts as lua
from infrastructure.redis.keys import (
    assignments_key,
    available_slots_key,
    index_key,
    summary_key,
    tracking_key,
)
from infrastructure.settings import Settings
from projections.slot_view import (
    DEADLINES,
    PENDING,
    ReadModel,
    VersionGap,
    change_of,
)

APPLICATION_NAME = "BatchService"  # the upstream application (its notification log)


class PositionLost(RuntimeError):
    """The stored position is behind what this projector wrote: Redis lost data."""


class RedisSlotView(TrackingRecorder):
    def __init__(
        self, client: redis.Redis, prefix: str = "", application_name: str = APPLICATION_NAME
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.application_name = application_name
        self._apply = client.register_script(lua.APPLY)
        self._read = client.register_script(lua.READ)
        self._advance = client.register_script(lua.ADVANCE)
        self._swap = client.register_script(lua.SWAP)
        self._drop = client.register_script(lua.DROP)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisSlotView:
        url = settings.redis_url.get_secret_value()
        # Every call bounded: a silent Redis (or a connection stranded by a failover)
        # raises redis.TimeoutError within REDIS_SOCKET_TIMEOUT_SECONDS; the call is
        # retried on a fresh connection, then the caller's transient handling takes over.
        tcp = {"socket_keepalive": True} if not url.startswith("unix:") else {}
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=settings.redis_socket_timeout_seconds,
            socket_connect_timeout=settings.redis_connect_timeout_seconds,
            health_check_interval=settings.redis_health_check_interval_seconds,
            **tcp,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), retries=2),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        return cls(client, settings.redis_key_prefix)

    def shadow(self, token: str) -> RedisSlotView:
        """A view under shadow keys (same hash tags), for a rebuild."""
        return RedisSlotView(self.client, f"{self.prefix}rebuild:{token}:", self.application_name)

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------ tracking

    def insert_tracking(self, tracking: Tracking) -> None:
        key = tracking_key(self.prefix, tracking.application_name)
        if not self._advance(keys=[key], args=[tracking.notification_id]):
            raise IntegrityError(f"position {tracking.notification_id} already recorded")

    def max_tracking_id(self, application_name: str) -> int | None:
        value = self.client.get(tracking_key(self.prefix, application_name))
        return None if value is None else int(cast(str, value))

    def position(self) -> int | None:
        return self.max_tracking_id(self.application_name)

    def advance_position(self, position: int) -> None:
        """Move the position forward to ``position`` (never backwards)."""
        self._advance(keys=[tracking_key(self.prefix, self.application_name)], args=[position])

    def wait_for(self, position: int | None, timeout: float = 1.0) -> None:
        """Read-your-writes: block until ``position`` is projected (TimeoutError)."""
        self.wait(self.application_name, position, timeout)

    # -------------------------------------------------------------- writes

    def apply(self, events: Sequence[tuple[Any, Tracking]], after: int | None) -> int | None:
        """Apply events in order, in one round trip; return the new position.

        ``after`` is the position this caller last wrote (None: none yet).
        Raises ``PositionLost`` or ``VersionGap``; the events before the failing
        one are applied, those from it on are not.
        """
        pipe = self.client.pipeline(transaction=False)
        previous = after
        for event, tracking in events:
            batch_id: str = event.batch_id
            self._apply(
                keys=[*self.batch_keys(batch_id), self._tracking(), *self.index_keys()],
                args=[
                    tracking.notification_id,
                    "" if previous is None else previous,
                    batch_id,
                    event.originator_version,
                    change_of(event).to_json(),
                ],
                client=pipe,
            )
            previous = tracking.notification_id
        for code, (event, tracking) in zip(pipe.execute(), events, strict=True):
            if code == -2:
                raise PositionLost(
                    f"stored position missing or behind ours (at {tracking.notification_id})"
                )
            if code == -1:
                raise VersionGap(
                    f"batch {event.batch_id!r}: missing events before version "
                    f"{event.originator_version}"
                )
        return previous

    def swap_in(
        self, shadow: RedisSlotView, batch_ids: Sequence[str], force: Set[str] = frozenset()
    ) -> int:
        """Atomically replace each batch's keys by the shadow's, unless live is newer
        (batches in ``force`` are replaced even then)."""
        pipe = self.client.pipeline(transaction=False)
        for batch_id in batch_ids:
            keys = [*self.batch_keys(batch_id), *shadow.batch_keys(batch_id)]
            keys += [*self.index_keys(), *shadow.index_keys()]
            self._swap(keys=keys, args=[batch_id, "1" if batch_id in force else ""], client=pipe)
        return sum(cast(list[int], pipe.execute()))

    def versions(self, batch_ids: Sequence[str]) -> dict[str, int]:
        """The live version of each batch (0: not in the view)."""
        pipe = self.client.pipeline(transaction=False)
        for batch_id in batch_ids:
            pipe.hget(summary_key(self.prefix, batch_id), "version")
        found = cast(list[str | None], pipe.execute())
        return {b: int(v or 0) for b, v in zip(batch_ids, found, strict=True)}

    def set_position(self, position: int) -> None:
        """Set the position, even backwards (see ``rebuild``)."""
        self.client.set(self._tracking(), position)

    def drop(self, batch_id: str, seen_version: str) -> bool:
        """Delete a batch's keys unless it changed since it was seen at ``seen_version``."""
        keys = [*self.batch_keys(batch_id), *self.index_keys()]
        return bool(self._drop(keys=keys, args=[batch_id, seen_version]))

    # --------------------------------------------------------------- reads

    def read_batch(self, batch_id: str) -> ReadModel | None:
        summary, slots, assignments = cast(
            list[list[str]], self._read(keys=self.batch_keys(batch_id))
        )
        if not summary:
            return None
        return ReadModel(_pairs(summary), set(slots), _pairs(assignments))

    def batch_ids(self) -> Iterator[str]:
        head, tail = summary_key(self.prefix, "\0").split("\0")
        for key in self.client.scan_iter(match=f"{head}*{tail}", count=1000):
            batch_id = cast(str, key)[len(head) : -len(tail)]
            if "{" not in batch_id and "}" not in batch_id:
                yield batch_id

    def due_for_timeout(self, now: datetime, *, limit: int | None = None) -> list[str]:
        """Open batches whose deadline is at or before ``now``."""
        return self._due(DEADLINES, now.timestamp(), limit)

    def due_for_expiry(
        self, now: datetime, ttl_seconds: int, *, limit: int | None = None
    ) -> list[str]:
        """Unregistered batches whose oldest pending content is ``ttl_seconds`` old."""
        return self._due(PENDING, now.timestamp() - ttl_seconds, limit)

    def index_members(self, index: str) -> dict[str, float]:
        pairs = self.client.zrange(index_key(self.prefix, index), 0, -1, withscores=True)
        return dict(cast(list[tuple[str, float]], pairs))

    def _due(self, index: str, max_score: float, limit: int | None) -> list[str]:
        key = index_key(self.prefix, index)
        start, num = (0, limit) if limit is not None else (None, None)
        found = self.client.zrangebyscore(key, "-inf", repr(max_score), start=start, num=num)
        return list(cast(list[str], found))

    # ---------------------------------------------------------------- keys

    def batch_keys(self, batch_id: str) -> list[str]:
        p = self.prefix
        return [
            summary_key(p, batch_id),
            available_slots_key(p, batch_id),
            assignments_key(p, batch_id),
        ]

    def index_keys(self) -> list[str]:
        return [index_key(self.prefix, DEADLINES), index_key(self.prefix, PENDING)]

    def _tracking(self) -> str:
        return tracking_key(self.prefix, self.application_name)


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))
