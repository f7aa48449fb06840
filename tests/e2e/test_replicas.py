"""Three ``batchctl run`` replicas on one store: each follower runs on one of them.

Real processes, real PostgreSQL, Redis and broker. Which replica leads which
follower is read from each replica's /metrics (``batchslot_follower_leader``).

- no faults: every event is published once (at most 1 % duplicates), and the
  three followers spread over the three replicas;
- kill -9 of the outbox's leader under traffic: another replica resumes
  publishing within 10 s, republishing at most one page (250 events);
- kill -9 of the outbox's leader twice while it publishes a backlog (the worst
  case: a page always in flight): each takeover republishes at most one page;
- SIGSTOP of the outbox's leader past its lease: a standby takes over, and the
  holder, once woken, publishes nothing new (at most the page it was sending).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infrastructure.bootstrap import Bootstrap
from infrastructure.kafka.clients import ensure_topics
from infrastructure.kafka.local_broker import LocalBroker, free_port
from infrastructure.settings import Settings
from tests.conftest import drop_redis_prefix, drop_schema
from tests.e2e.conftest import drained, kafka_settings, produce, service_env
from tests.e2e.test_outbox_restart import backlog, notification_ids, published_ids
from tests.support.followers import outbox_of
from tests.support.scenario import Message, content, registration

ROOT = Path(__file__).resolve().parents[2]
BOUND = 45.0
FOLLOWERS = ("projector", "outbox", "due_index")
PAGE = 250  # the outbox's page: what a holder can send before it notices it lost its lease
LEASE_TTL = 5.0  # the default LEASE_TTL_SECONDS


@dataclass
class Replica:
    index: int
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes]
    started_at: float

    def metrics(self) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                return str(r.read().decode())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return ""

    def value(self, text: str, name: str, **labels: str) -> float:
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            if line.startswith(f"{name}{{") and want in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def leads(self) -> set[str]:
        text = self.metrics()
        return {
            f for f in FOLLOWERS if self.value(text, "batchslot_follower_leader", follower=f) == 1
        }

    def readyz(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_messages(self) -> list[str]:
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                found.append(str(json.loads(line).get("msg", "")))
        return found


def start(settings: Settings, tmp_path: Path, index: int, **extra: str) -> Replica:
    port = free_port()
    env = service_env(
        settings, METRICS_PORT=str(port), LOG_LEVEL="INFO", READYZ_CACHE_SECONDS="0.5", **extra
    )
    log_path = tmp_path / f"replica-{index}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "infrastructure.cli.main", "run", "--no-local-broker"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Replica(index, port, log_path, proc, time.monotonic())


def until(
    check: Callable[[], bool], what: str, replicas: list[Replica], bound: float = BOUND
) -> None:
    deadline = time.monotonic() + bound
    while not check():
        for r in replicas:
            if r.proc.poll() is not None and r.proc.returncode not in (-9,):
                pytest.fail(f"replica {r.index} exited {r.proc.returncode}:\n{r.tail()}")
        if time.monotonic() > deadline:
            tails = "\n\n".join(f"replica {r.index}:\n{r.tail()}" for r in replicas)
            pytest.fail(f"{what} not reached within {bound:.0f}s:\n{tails}")
        time.sleep(0.1)


@pytest.fixture
def replica_env() -> dict[str, str]:
    """Extra environment of the replicas (a test parametrizes it to change it)."""
    return {}


@pytest.fixture
def replicas(
    e2e_settings: Settings, tmp_path: Path, replica_env: dict[str, str]
) -> Iterator[list[Replica]]:
    started = [start(e2e_settings, tmp_path, i, **replica_env) for i in range(3)]
    yield started
    for r in started:
        if r.proc.poll() is None:
            os.kill(r.proc.pid, signal.SIGCONT)
            r.proc.send_signal(signal.SIGTERM)
    for r in started:
        try:
            r.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait(10)


def leader_of(replicas: list[Replica], follower: str) -> list[Replica]:
    return [r for r in replicas if r.proc.poll() is None and follower in r.leads()]


def one_leader_each(replicas: list[Replica]) -> bool:
    return all(len(leader_of(replicas, f)) == 1 for f in FOLLOWERS)


def spread(replicas: list[Replica]) -> bool:
    """Every follower led by one replica, each replica leading one (the hand-overs done)."""
    return one_leader_each(replicas) and all(len(r.leads()) == 1 for r in replicas)


def batch_messages(prefix: str, batches: int, essays: int = 10) -> list[Message]:
    messages = []
    for b in range(batches):
        batch = f"{prefix}-{b}"
        ids = [f"{batch}-e{i}" for i in range(essays)]
        messages.append(registration(batch, ids))
        messages += [content(batch, f"t-{e}", f"f-{e}") for e in ids]
    return messages


class Traffic:
    """Rounds of batches produced every ``every`` seconds in a thread, until stopped."""

    def __init__(self, settings: Settings, batches: int = 10, every: float = 0.25) -> None:
        self.settings, self.batches, self.every = settings, batches, every
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _main(self) -> None:
        while not self._stop.is_set():
            asyncio.run(produce(self.settings, batch_messages(f"r{self.rounds}", self.batches)))
            self.rounds += 1
            self._stop.wait(self.every)


class Store:
    """The store's head and the outbox's position, read directly."""

    def __init__(self, settings: Settings) -> None:
        self.service = Bootstrap(settings).batch_service()
        self.reader = outbox_of(settings, self.service)

    def head(self) -> int:
        return self.service.recorder.max_notification_id() or 0

    def published(self) -> int:
        return self.reader.position()

    def close(self) -> None:
        self.service.close()


def all_published(settings: Settings, store: Store, replicas: list[Replica]) -> Counter[bytes]:
    asyncio.run(drained(settings, timeout=60))
    until(lambda: store.published() >= store.head() > 0, "the outbox caught up", replicas)
    stored = notification_ids(settings)
    seen = Counter(asyncio.run(published_ids(settings, at_least=len(stored))))
    assert set(seen) == set(stored), "events lost or unknown on the topic"
    return seen


def duplicates(seen: Counter[bytes]) -> int:
    return sum(n - 1 for n in seen.values())


# A short stall timeout: a standby's watchdog must not take "no progress" for a stall.
@pytest.mark.parametrize("replica_env", [{"STALL_TIMEOUT_SECONDS": "2"}])
@pytest.mark.timeout(120)
def test_three_replicas_share_the_followers_and_publish_every_event_once(
    e2e_settings: Settings, replicas: list[Replica]
) -> None:
    # The followers spread: one each (the first replica up takes all three, then hands over).
    until(lambda: spread(replicas), "one follower per replica", replicas, bound=30)
    last_up = max(r.started_at for r in replicas)
    print(json.dumps({"spread_after_last_start_s": round(time.monotonic() - last_up, 1)}))
    until(lambda: all(r.readyz() == 200 for r in replicas), "every replica ready", replicas)
    assert all(r.readyz() == 200 for r in replicas)  # standbys are ready
    store = Store(e2e_settings)
    try:
        with Traffic(e2e_settings, batches=20) as traffic:
            until(lambda: traffic.rounds >= 8, "traffic", replicas)
        seen = all_published(e2e_settings, store, replicas)
        events = len(seen)
        print(json.dumps({"events": events, "duplicates": duplicates(seen)}))
        assert duplicates(seen) <= events // 100, duplicates(seen)
        assert one_leader_each(replicas)
        for r in replicas:  # no stall on a standby (nor on a leader)
            stalls = [
                line for line in r.metrics().splitlines() if "batchslot_stalls_total{" in line
            ]
            assert all(line.endswith(" 0.0") for line in stalls), stalls
            assert not [m for m in r.log_messages() if m.startswith("stalled:")]
    finally:
        store.close()


@pytest.mark.timeout(150)
def test_kill_9_of_the_outbox_leader_under_traffic_resumes_on_another_within_10s(
    e2e_settings: Settings, replicas: list[Replica]
) -> None:
    until(lambda: spread(replicas), "one follower per replica", replicas)
    store = Store(e2e_settings)
    try:
        with Traffic(e2e_settings) as traffic:
            until(lambda: traffic.rounds >= 4 and store.published() > 0, "publishing", replicas)
            (victim,) = leader_of(replicas, "outbox")
            os.kill(victim.proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            victim.proc.wait(10)
            at_kill = store.published()
            others = [r for r in replicas if r is not victim]
            until(lambda: len(leader_of(others, "outbox")) == 1, "a new outbox leader", others)
            led = time.monotonic() - killed
            until(lambda: store.published() > at_kill, "publishing again", others, bound=10)
            resumed = time.monotonic() - killed
            until(lambda: traffic.rounds >= 12, "more traffic", others)
        seen = all_published(e2e_settings, store, others)
        figures = {
            "events": len(seen),
            "duplicates": duplicates(seen),
            "new_leader_s": round(led, 2),
            "publishing_again_s": round(resumed, 2),
        }
        print(json.dumps(figures))
        assert resumed < 10, figures
        assert duplicates(seen) <= PAGE, figures
        (taker,) = leader_of(others, "outbox")
        assert any(m.startswith("leading outbox") for m in taker.log_messages())
    finally:
        store.close()


@pytest.mark.timeout(150)
def test_a_stopped_outbox_leader_is_taken_over_and_publishes_nothing_new_when_woken(
    e2e_settings: Settings, replicas: list[Replica]
) -> None:
    until(lambda: spread(replicas), "one follower per replica", replicas)
    store = Store(e2e_settings)
    try:
        with Traffic(e2e_settings) as traffic:
            until(lambda: traffic.rounds >= 4 and store.published() > 0, "publishing", replicas)
            (victim,) = leader_of(replicas, "outbox")
            os.kill(victim.proc.pid, signal.SIGSTOP)
            stopped = time.monotonic()
            others = [r for r in replicas if r is not victim]
            until(lambda: len(leader_of(others, "outbox")) == 1, "a standby took over", others)
            took = time.monotonic() - stopped
            at_takeover = store.published()
            until(lambda: store.published() > at_takeover, "publishing again", others, bound=10)
            resumed = time.monotonic() - stopped
            # Stay stopped past the lease, then wake it up while the traffic goes on.
            time.sleep(max(0.0, stopped + LEASE_TTL + 2 - time.monotonic()))
            while_stopped = Counter(asyncio.run(published_ids(e2e_settings)))
            os.kill(victim.proc.pid, signal.SIGCONT)
            until(
                lambda: "outbox" not in victim.leads() and victim.metrics() != "",
                "the woken holder standing by",
                replicas,
            )
            time.sleep(3)  # it would publish now if it were not fenced
        seen = all_published(e2e_settings, store, replicas)
        after_wake = duplicates(seen) - duplicates(while_stopped)
        figures = {
            "events": len(seen),
            "duplicates": duplicates(seen),
            "duplicates_after_wake": after_wake,
            "standby_leads_s": round(took, 2),
            "publishing_again_s": round(resumed, 2),
        }
        print(json.dumps(figures))
        assert took < LEASE_TTL + 3, figures
        assert after_wake <= PAGE, figures
        assert duplicates(seen) <= PAGE, figures
        text = victim.metrics()
        lost = sum(
            victim.value(text, "batchslot_follower_lease_losses_total", follower="outbox", reason=r)
            for r in ("lost", "fenced")
        )
        assert lost >= 1, text
        assert len(leader_of(replicas, "outbox")) == 1
        assert any(
            re.match(r"standing by for outbox: lease (lost|fenced)", m)
            for m in victim.log_messages()
        )
    finally:
        store.close()


@pytest.mark.timeout(150)
def test_kill_9_of_the_outbox_leader_mid_backlog_republishes_at_most_one_page_each(
    broker: LocalBroker, tmp_path: Path
) -> None:
    s = kafka_settings(broker)
    asyncio.run(ensure_topics(s))
    total = backlog(s, batches=20, slots=1500)  # ~30,000 events waiting
    nid = notification_ids(s)
    store = Store(s)
    alive = [start(s, tmp_path, i) for i in range(3)]
    kills: list[int] = []  # the recorded position at each kill: where the taker resumes
    resumed: list[float] = []
    try:
        for threshold in (total // 5, 2 * total // 5):
            until(lambda: store.published() >= threshold, "publishing", alive)  # noqa: B023
            until(lambda: len(leader_of(alive, "outbox")) == 1, "an outbox leader", alive)
            (victim,) = leader_of(alive, "outbox")
            os.kill(victim.proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            victim.proc.wait(10)
            alive.remove(victim)
            at_kill = store.published()
            assert at_kill < total, "the kill came after the end"
            kills.append(at_kill)
            until(lambda: store.published() > at_kill, "publishing again", alive, bound=10)  # noqa: B023
            resumed.append(round(time.monotonic() - killed, 2))
        until(lambda: store.published() >= total, "the backlog published", alive, bound=60)
        seen = Counter(asyncio.run(published_ids(s, at_least=total)))
        assert set(seen) == set(nid)  # nothing lost
        # A takeover republishes from the recorded position: each duplicate belongs to
        # the last kill at or before its notification id.
        republished = [0] * len(kills)
        for event_id, n in seen.items():
            for k in reversed(range(len(kills))):
                if n > 1 and nid[event_id] > kills[k]:
                    republished[k] += n - 1
                    break
        figures = {
            "events": total,
            "republished_per_kill": republished,
            "duplicates": duplicates(seen),
            "publishing_again_s": resumed,
        }
        print(json.dumps(figures))
        assert sum(republished) == duplicates(seen), figures
        assert max(republished) <= PAGE, figures
        assert max(resumed) < 10, figures
    finally:
        for r in alive:
            r.proc.send_signal(signal.SIGTERM)
        for r in alive:
            r.proc.wait(30)
        store.close()
        drop_schema(s)
        drop_redis_prefix(s)
