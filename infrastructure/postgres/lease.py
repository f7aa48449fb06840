"""Follower leases: one instance per follower per store runs it, the others stand by.

A lease is a session-level advisory lock (``pg_try_advisory_lock(LEASE_LOCK_KEY,
key)``, the key derived from the store's schema and the follower's name) held
on one dedicated connection per process, the *keeper's*; Marten's async daemon
does the same in its hot/cold mode. What ends a lease:

- the holder dies (kill -9, a crash): the kernel closes the socket, the server
  ends the session at once and its locks go with it;
- the holder is stopped (SIGSTOP), partitioned, or its connection stranded (a
  proxy that keeps the flow open with nobody behind it): TCP keepalives cannot
  tell (a stopped process's kernel still answers them), so the server bounds
  the session itself: the keeper's connection sets ``idle_session_timeout`` to
  LEASE_TTL_SECONDS and sends a heartbeat every LEASE_RETRY_SECONDS. A holder
  that stops sending for the TTL has its session ended *by the server*, which
  needs nothing from the client. Keepalives and ``tcp_user_timeout`` (the same
  bounds as every connection, ``timeouts.py``) still bound the client's side.

The heartbeat is one query of ``pg_locks``: which of our leases this session
holds (the confirmation the fence relies on), which are held by other
sessions, and how many *peers* (instances that run the same set of followers,
each holding a shared advisory lock on the set's key) are connected. From that
each keeper takes free leases up to its fair share (``ceil(followers /
peers)``) at once, more only after one stayed free for ``GRACE`` heartbeats,
and asks to hand one over when it holds more than its share while a peer holds
less: the followers spread over the replicas.

Fencing (``confirmed``): a heartbeat sent at *s* and answered says the session
was alive at *s*, so the server cannot end it before *s* + TTL. The holder
trusts its lease until *s* + TTL / 2 without a round trip, and past that asks
the server again (``confirm``); a stopped holder that wakes finds its last
confirmation too old, asks, and learns that its session is gone. Leases only
choose which instance runs a follower: every follower's writes are already
safe to repeat or to race (version-guarded and forward-only in Redis,
compare-and-set in the due-batch index, insert-only positions for the outbox),
so a stale holder costs duplicates at worst, never a wrong decision.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from infrastructure.postgres.store import conninfo
from infrastructure.postgres.timeouts import BoundedConnection, libpq_bounds
from infrastructure.settings import Settings

log = logging.getLogger("batchslot.lease")

LEASE_LOCK_KEY = 0x42534C45  # "BSLE": the first key of every follower lease
GRACE = 3  # heartbeats a lease stays free before an instance at its fair share takes it

# Every lease and peer lock of the database: key, holder, mine?, mode, and how long ago
# the holder's session last began or ended a statement (a live keeper: under a heartbeat).
_STATE = """
SELECT l.objid::bigint, l.pid, l.pid = pg_backend_pid(), l.mode,
       coalesce(extract(epoch FROM now() - a.state_change), 0)::float8
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.classid = %s::bigint::oid
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


class LeaseLost(RuntimeError):
    """This instance no longer holds (or cannot confirm) the lease of a follower."""


def _key(text: str) -> int:
    """A stable signed 32-bit key (advisory locks take two int4 keys)."""
    return int.from_bytes(
        hashlib.blake2b(text.encode(), digest_size=4).digest(), "big", signed=True
    )


def lease_key(schema: str, follower: str) -> int:
    return _key(f"batchslot:lease:{schema}:{follower}")


def peers_key(schema: str, followers: Sequence[str]) -> int:
    return _key(f"batchslot:peers:{schema}:{','.join(sorted(followers))}")


def preference(followers: Sequence[str], instance: str) -> list[str]:
    """``followers`` rotated by a hash of the instance id: each instance's order of choice
    (first taken, last handed over), so replicas start from different followers."""
    names = list(followers)
    if not names:
        return names
    shift = _key(f"batchslot:instance:{instance}") % len(names)
    return names[shift:] + names[:shift]


@dataclass(frozen=True)
class Change:
    """What the keeper tells the runner of a follower (``on_change``)."""

    follower: str
    what: str  # "acquired", "lost", "release" (hand it over: fair share exceeded)
    detail: str = ""
    # acquired: seconds since the previous holder's session last showed life (its last
    # statement, as this keeper last saw it; 0: nobody held it): about how long the
    # follower ran nowhere
    waited: float = 0.0


@dataclass
class _State:
    held: set[str] = field(default_factory=set)
    releasing: set[str] = field(default_factory=set)
    confirmed_at: float = -math.inf  # monotonic time the last confirming heartbeat was sent
    free_since: dict[str, float] = field(default_factory=dict)
    last_alive: dict[str, float] = field(default_factory=dict)  # the other holder, last seen
    holder: dict[str, int] = field(default_factory=dict)  # follower -> pid of its holder
    peers: int = 1
    quiet_until: float = 0.0  # no hand-over before this (the last one settles first)
    acquired: dict[str, Change] = field(default_factory=dict)  # the last takeover of each
    # Incremented at every acquisition: a lease lost and taken again (a new session) is
    # another lease, and the follower run under the old one must stop.
    generation: dict[str, int] = field(default_factory=dict)


class LeaseKeeper:
    """The leases of one instance on the followers of one store (see module docstring).

    ``start()`` runs the heartbeat in a thread of its own (a busy event loop cannot
    delay it); ``on_change`` is called from that thread. ``confirmed``/``confirm``
    are the fence, ``release`` hands a lease over, ``close`` gives every lease up.
    """

    def __init__(
        self,
        settings: Settings,
        followers: Sequence[str],
        instance: str,
        *,
        on_change: Callable[[Change], None] | None = None,
    ) -> None:
        self.settings = settings
        self.instance = instance
        self.ttl = settings.lease_ttl_seconds
        self.interval = settings.lease_retry_seconds
        self.order = preference(followers, instance)
        schema = settings.database_schema
        self._keys = {name: lease_key(schema, name) for name in self.order}
        self._names = {key % 2**32: name for name, key in self._keys.items()}
        self._peers_key = peers_key(schema, self.order)
        self.on_change = on_change or (lambda change: None)
        self._lock = threading.RLock()  # the connection and the state
        self._conn: psycopg.Connection[Any] | None = None
        self._state = _State()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ the fence

    def holds(self, follower: str, generation: int | None = None) -> bool:
        """Held now (and, given ``generation``, still the same acquisition)."""
        with self._lock:
            state = self._state
            same = generation is None or state.generation.get(follower) == generation
            return follower in state.held and same

    def generation(self, follower: str) -> int:
        """Which acquisition of the lease this instance holds (see ``_State.generation``)."""
        with self._lock:
            return self._state.generation.get(follower, 0)

    def confirmed(self, follower: str, generation: int | None = None) -> bool:
        """Held (the same acquisition), and confirmed by the server recently enough that
        it cannot have ended (no round trip)."""
        with self._lock:
            fresh = time.monotonic() < self._state.confirmed_at + self.ttl / 2
            return fresh and self.holds(follower, generation)

    def confirm(self, follower: str, generation: int | None = None) -> None:
        """Raise ``LeaseLost`` unless the server confirms now that this session holds it."""
        if self.confirmed(follower, generation):
            return
        self.heartbeat(acquire=False)
        if not self.confirmed(follower, generation):
            raise LeaseLost(f"the {follower} lease is no longer held by this instance")

    def acquired(self, follower: str) -> Change | None:
        """How this instance last took the lease of ``follower`` (for the log line)."""
        with self._lock:
            return self._state.acquired.get(follower)

    def release_requested(self, follower: str) -> bool:
        with self._lock:
            return follower in self._state.releasing

    @property
    def peers(self) -> int:
        return self._state.peers

    # ------------------------------------------------------------ lifecycle

    def start(self) -> LeaseKeeper:
        self._thread = threading.Thread(target=self._main, name="lease-keeper", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the heartbeat and give every lease up (the session ends)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.ttl)
        with self._lock:
            changes = self._drop("closed")
        self._tell(changes, quiet=True)

    def _main(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.heartbeat()
            except Exception:  # never let the keeper die: every lease is simply given up
                log.exception("lease keeper: unexpected error")
                with self._lock:
                    changes = self._drop("keeper error")
                self._tell(changes)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    # ------------------------------------------------------------ heartbeat

    def heartbeat(self, *, acquire: bool = True) -> None:
        """Confirm the leases held; with ``acquire``, take free ones and ask for hand-overs."""
        with self._lock:
            changes = self._heartbeat(acquire)
        self._tell(changes)

    def _heartbeat(self, acquire: bool) -> list[Change]:
        state = self._state
        try:
            conn = self._connection()
            sent = time.monotonic()
            rows = conn.execute(_STATE, (LEASE_LOCK_KEY,)).fetchall()
        except Exception as e:
            if self._conn is None and not state.held:
                log.debug("lease connection failed: %r", e)
            return self._drop(f"lease connection failed ({type(e).__name__})")
        changes: list[Change] = []
        mine = {
            self._names[o]
            for o, _, me, mode, _ in rows
            if me and o in self._names and mode == "ExclusiveLock"
        }
        for name in sorted(state.held - mine):
            changes.append(Change(name, "lost", "the server no longer shows it held"))
        state.held &= mine
        state.releasing &= mine
        state.confirmed_at = sent
        if not acquire:
            return changes
        peers_u = self._peers_key % 2**32
        peers = {pid for o, pid, _, mode, _ in rows if o == peers_u and mode == "ShareLock"}
        holders: dict[str, int] = {}
        for o, pid, me, mode, idle in rows:
            if o in self._names and mode == "ExclusiveLock":
                holders[self._names[o]] = pid
                if not me:
                    state.last_alive[self._names[o]] = sent - idle
        state.holder.update(holders)
        state.peers = max(1, len(peers))
        fair = math.ceil(len(self.order) / state.peers)
        now = time.monotonic()
        for name in self.order:
            if name in holders:
                state.free_since.pop(name, None)
                continue
            since = state.free_since.setdefault(name, now)
            wanted = len(state.held) < fair or now - since >= GRACE * self.interval
            if wanted and self._try_lock(conn, name):
                state.held.add(name)
                state.generation[name] = state.generation.get(name, 0) + 1
                state.free_since.pop(name, None)
                previous = state.holder.get(name)
                state.holder[name] = conn.info.backend_pid
                detail = f"previous holder backend {previous}" if previous else "first holder"
                waited = now - state.last_alive.pop(name, now)
                change = Change(name, "acquired", detail, waited=waited)
                state.acquired[name] = change
                changes.append(change)
        # Hand one over when above the fair share while a peer is below it (and no lease
        # is free or being handed over: the counts are settled).
        counts = {pid: 0 for pid in peers}
        for pid in holders.values():
            if pid in counts:
                counts[pid] += 1
        others = [n for pid, n in counts.items() if pid != conn.info.backend_pid]
        settled = len(holders) == len(self.order) and not state.releasing
        if (
            settled
            and now >= state.quiet_until
            and len(state.held) > fair
            and others
            and min(others) < fair
        ):
            name = [n for n in self.order if n in state.held][-1]
            state.releasing.add(name)
            state.quiet_until = now + 2 * self.interval
            changes.append(
                Change(
                    name, "release", f"{len(state.held)} held, fair share {fair} of {state.peers}"
                )
            )
        return changes

    def _try_lock(self, conn: psycopg.Connection[Any], follower: str) -> bool:
        row = conn.execute(
            "SELECT pg_try_advisory_lock(%s, %s)", (LEASE_LOCK_KEY, self._keys[follower])
        ).fetchone()
        return row is not None and bool(row[0])

    def release(self, follower: str, generation: int | None = None) -> None:
        """Give one lease up (its follower has stopped): another instance takes it.
        With ``generation``: only that acquisition (not one taken again since)."""
        with self._lock:
            state = self._state
            if not self.holds(follower, generation):
                return
            state.releasing.discard(follower)
            state.held.discard(follower)
            state.free_since[follower] = time.monotonic()  # counts from now for GRACE
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.execute(
                        "SELECT pg_advisory_unlock(%s, %s)", (LEASE_LOCK_KEY, self._keys[follower])
                    )

    # ------------------------------------------------------------- helpers

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = lease_connection(self.settings, self.instance)
            try:
                conn.execute(
                    "SELECT pg_advisory_lock_shared(%s, %s)", (LEASE_LOCK_KEY, self._peers_key)
                )
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop(self, why: str) -> list[Change]:
        """Close the connection (the session's locks go with it); every lease is lost."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        state = self._state
        changes = [Change(name, "lost", why) for name in sorted(state.held)]
        state.held.clear()
        state.releasing.clear()
        state.confirmed_at = -math.inf
        return changes

    def _tell(self, changes: list[Change], *, quiet: bool = False) -> None:
        for change in changes:
            try:
                self.on_change(change)
            except Exception:
                if not quiet:
                    log.exception("lease keeper: on_change failed")


def lease_connection(settings: Settings, instance: str) -> psycopg.Connection[Any]:
    """The keeper's connection: the usual bounds; a call deadline, statement timeout and
    connect timeout of about half the TTL (libpq's is whole seconds, at least 2); and
    ``idle_session_timeout`` = TTL: the server ends the session, and so its leases, when
    the holder stops sending heartbeats."""
    ttl_ms = int(settings.lease_ttl_seconds * 1000)
    bounds = {
        **libpq_bounds(settings),
        "connect_timeout": min(
            settings.database_connect_timeout_seconds,
            max(2, math.ceil(settings.lease_ttl_seconds / 2)),
        ),
        "options": f"-c statement_timeout={ttl_ms // 2} -c idle_session_timeout={ttl_ms}",
        "application_name": f"batchslot-lease {instance}"[:63],
    }
    conn = BoundedConnection.with_timeout(settings.lease_ttl_seconds / 2).connect(
        **{**conninfo(settings), **bounds}
    )
    conn.autocommit = True
    return conn
