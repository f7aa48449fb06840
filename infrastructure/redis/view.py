"""The Redis slot view (CONTRACT §4): an eventsourcing ``TrackingRecorder``.

Every event is applied by one Lua script (infrastructure/redis/scripts.py)
that writes the batch's keys, guarded by the batch's version: a re-delivered
or replayed event changes nothing. A page of events goes in one pipelined
round trip per Redis server; only then is the projection position moved
forward, in its own key. Every script touches the keys of one hash tag, so the
same code runs on one Redis server and on a Redis Cluster
(docs/architecture.md "The read model's position"). It holds only the public
read model (CONTRACT §4) and its position; the timeout sweep reads PostgreSQL
(infrastructure/postgres/due_index.py), never this cache.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence, Set
from typing import Any, cast

import redis
from eventsourcing.persistence import IntegrityError, Tracking, TrackingRecorder
from redis.cluster import RedisCluster
from redis.commands.core import Script

from infrastructure.redis import scripts as lua
from infrastructure.redis.client import Client, connect, node_clients
from infrastructure.redis.keys import (
    assignments_key,
    available_slots_key,
    summary_key,
    tracking_key,
)
from infrastructure.settings import Settings
from projections.slot_view import ReadModel, VersionGap, change_of

APPLICATION_NAME = "BatchService"  # the upstream application (its notification log)
log = logging.getLogger(__name__)

# What a Redis Cluster answers while a slot moves or a primary fails over: the
# topology is read again and the caller retries (infrastructure/transient.py).
TOPOLOGY_CHANGED = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.AskError,  # and MovedError
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterError,
    redis.exceptions.SlotNotCoveredError,
)

REPLICAS_CHECK_SECONDS = 5.0  # how long a primary's "has a replica" answer is trusted
Call = tuple[Script, list[str], list[Any]]  # a script, its keys (one hash tag), its arguments


class PositionLost(RuntimeError):
    """The stored position is behind what this projector wrote: Redis lost data."""


class RedisSlotView(TrackingRecorder):
    def __init__(
        self,
        client: Client,
        prefix: str = "",
        application_name: str = APPLICATION_NAME,
        replica_wait_ms: int = 1000,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.application_name = application_name
        # Cluster: how long a page's writes may wait for a replica's acknowledgement.
        self.replica_wait_ms = replica_wait_ms
        self._apply = client.register_script(lua.APPLY)
        self._read = client.register_script(lua.READ)
        self._advance = client.register_script(lua.ADVANCE)
        self._swap = client.register_script(lua.SWAP)
        self._drop = client.register_script(lua.DROP)
        self._unreplicated_logged = 0.0
        self._replica_counts: dict[str, tuple[float, int]] = {}  # primary -> (checked, 0|1)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisSlotView:
        wait = min(1.0, settings.redis_socket_timeout_seconds / 2)
        return cls(connect(settings), settings.redis_key_prefix, replica_wait_ms=int(wait * 1000))

    @property
    def cluster(self) -> bool:
        return isinstance(self.client, RedisCluster)

    def shadow(self, token: str) -> RedisSlotView:
        """A view under shadow keys (same hash tags), for a rebuild."""
        return RedisSlotView(
            self.client,
            f"{self.prefix}rebuild:{token}:",
            self.application_name,
            self.replica_wait_ms,
        )

    def close(self) -> None:
        self.client.close()

    def disconnect(self) -> None:
        """Drop every connection, in use or not (the stall watchdog's lever): calls
        blocked on a silent server fail; the next ones open fresh connections."""
        for client in node_clients(self.client):
            client.connection_pool.disconnect(inuse_connections=True)

    # ------------------------------------------------------------ tracking

    def insert_tracking(self, tracking: Tracking) -> None:
        key = tracking_key(self.prefix, tracking.application_name)
        if self._advance(keys=[key], args=[tracking.notification_id, ""]) != 1:
            raise IntegrityError(f"position {tracking.notification_id} already recorded")

    def max_tracking_id(self, application_name: str) -> int | None:
        value = self.client.get(tracking_key(self.prefix, application_name))
        return None if value is None else int(cast(str, value))

    def position(self) -> int | None:
        return self.max_tracking_id(self.application_name)

    def advance_position(self, position: int) -> None:
        """Move the position forward to ``position`` (never backwards)."""
        self._advance(keys=[self._tracking()], args=[position, ""])

    def wait_for(self, position: int | None, timeout: float = 1.0) -> None:
        """Read-your-writes: block until ``position`` is projected (TimeoutError)."""
        self.wait(self.application_name, position, timeout)

    # -------------------------------------------------------------- writes

    def apply(self, events: Sequence[tuple[Any, Tracking]], after: int | None) -> int | None:
        """Apply a page of events (in order per batch), then move the position to the
        page's last notification id; return the new position.

        ``after`` is the position this caller last wrote (None: none yet).
        Raises ``VersionGap`` (the position does not move; other batches' events
        of the page may be applied: replaying them changes nothing) or
        ``PositionLost`` (the stored position is missing or behind ``after``).
        """
        if not events:
            return after
        calls: list[Call] = [
            (
                self._apply,
                self.batch_keys(event.batch_id),
                [event.originator_version, change_of(event).to_json()],
            )
            for event, _ in events
        ]
        for code, (event, _) in zip(self._run(calls), events, strict=True):
            if code == -1:
                raise VersionGap(
                    f"batch {event.batch_id!r}: missing events before version "
                    f"{event.originator_version}"
                )
        position = events[-1][1].notification_id
        previous = "" if after is None else after
        (code,) = self._run([(self._advance, [self._tracking()], [position, previous])])
        if code == -2:
            raise PositionLost(f"stored position missing or behind ours (at {position})")
        return position

    def swap_in(
        self, shadow: RedisSlotView, batch_ids: Sequence[str], force: Set[str] = frozenset()
    ) -> int:
        """Atomically replace each batch's keys by the shadow's, unless live is newer
        (batches in ``force`` are replaced even then)."""
        calls: list[Call] = [
            (
                self._swap,
                [*self.batch_keys(batch_id), *shadow.batch_keys(batch_id)],
                [batch_id, "1" if batch_id in force else ""],
            )
            for batch_id in batch_ids
        ]
        return sum(cast(list[int], self._run(calls)))

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
        return bool(self._drop(keys=self.batch_keys(batch_id), args=[batch_id, seen_version]))

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

    # ---------------------------------------------------------------- keys

    def batch_keys(self, batch_id: str) -> list[str]:
        p = self.prefix
        return [
            summary_key(p, batch_id),
            available_slots_key(p, batch_id),
            assignments_key(p, batch_id),
        ]

    def _tracking(self) -> str:
        return tracking_key(self.prefix, self.application_name)

    # ------------------------------------------------------------- running

    def _run(self, calls: Sequence[Call]) -> list[Any]:
        """Run script calls in non-transactional pipelines, one per server, each in
        the calls' order; return the results in the calls' order.

        On a Redis Cluster the calls are grouped by the primary that holds their
        keys' slot (every call's keys share one hash tag), and each group ends with
        WAIT for that primary's replica, so that what the position will cover is on
        two servers before the position moves (a failover keeps it). A topology
        change (a slot moved, a primary failed over) reads the topology again and
        raises: the caller retries the page, which changes nothing already applied.
        """
        results: list[Any] = [None] * len(calls)
        try:
            for client, replicas, indexes in self._groups(calls):
                found = self._pipelined(client, [calls[i] for i in indexes], replicas)
                for i, result in zip(indexes, found, strict=False):
                    results[i] = result
                if replicas and int(found[-1]) < replicas:
                    self._unreplicated(client)
        except TOPOLOGY_CHANGED:
            if self.cluster:
                with contextlib.suppress(redis.RedisError, redis.exceptions.RedisClusterException):
                    cast(RedisCluster, self.client).nodes_manager.initialize()
            raise
        return results

    def _pipelined(self, client: redis.Redis, calls: Sequence[Call], replicas: int) -> list[Any]:
        """One server's calls in one pipeline, each script by its SHA (EVALSHA): one round
        trip per page. (redis-py's own script calls in a pipeline first ask SCRIPT EXISTS,
        a round trip more per page.) A server that lacks a script (restarted, flushed, a
        replica promoted) answers NOSCRIPT to the calls of it: the scripts are loaded
        and exactly those calls sent again, so no call runs twice."""
        found = self._send(client, calls, replicas)
        missing = [i for i, r in enumerate(found[: len(calls)]) if _no_script(r)]
        if missing:
            for script in {id(script): script for script, _, _ in calls}.values():
                client.script_load(script.script)
            again = self._send(client, [calls[i] for i in missing], replicas)
            for i, result in zip(missing, again, strict=False):
                found[i] = result
            if replicas:
                found[-1] = again[-1]  # the WAIT that covers the calls sent again
        for result in found:
            if isinstance(result, Exception):
                raise result
        return found

    def _send(self, client: redis.Redis, calls: Sequence[Call], replicas: int) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        if replicas:
            pipe.wait(replicas, self.replica_wait_ms)
        return pipe.execute(raise_on_error=False)

    def _groups(self, calls: Sequence[Call]) -> list[tuple[redis.Redis, int, list[int]]]:
        """(server's client, replicas to wait for, indexes of its calls) per server."""
        if not isinstance(self.client, RedisCluster):
            return [(self.client, 0, list(range(len(calls))))]
        cluster = self.client
        groups: dict[str, tuple[redis.Redis, int, list[int]]] = {}
        for i, (_, keys, _) in enumerate(calls):
            slot = cluster.keyslot(keys[0])  # type: ignore[no-untyped-call]
            nodes = cluster.nodes_manager.slots_cache.get(slot) or []
            if not nodes:
                raise redis.exceptions.SlotNotCoveredError(f"slot {slot} is not covered")
            primary = nodes[0]
            if primary.name not in groups:
                client = cluster.get_redis_connection(primary)
                groups[primary.name] = (client, self._replicas(primary.name, client), [])
            groups[primary.name][2].append(i)
        return list(groups.values())

    def _replicas(self, name: str, client: redis.Redis) -> int:
        """1 when the primary has a replica connected (asked at most every
        REPLICAS_CHECK_SECONDS), else 0: nothing to wait for. Asked of the primary,
        not read from the client's slot map, which leaves out a replica that has
        not reported an offset yet and is only refreshed after an error."""
        now = time.monotonic()
        checked = self._replica_counts.get(name)
        if checked is None or now - checked[0] >= REPLICAS_CHECK_SECONDS:
            info = client.info("replication")
            checked = (now, min(1, int(info.get("connected_slaves", 0))))
            self._replica_counts[name] = checked
        return checked[1]

    def _unreplicated(self, client: redis.Redis) -> None:
        """No replica acknowledged in time (it is down or resyncing): the writes stay
        on one server, as on a single Redis. Logged at most once a minute."""
        now = time.monotonic()
        if now - self._unreplicated_logged >= 60:
            self._unreplicated_logged = now
            where = client.connection_pool.connection_kwargs.get("host", "?")
            log.warning(
                "Redis Cluster: no replica of the primary at %s acknowledged the read "
                "model's writes within %d ms; going on with one copy",
                where,
                self.replica_wait_ms,
            )


def _no_script(result: Any) -> bool:
    return isinstance(result, redis.exceptions.NoScriptError)


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))
