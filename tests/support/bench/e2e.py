"""Section 4 of the benchmark: end to end through the real broker and `batchctl run`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import redis

from infrastructure.bootstrap import Bootstrap
from infrastructure.kafka.clients import ensure_topics, make_consumer, make_producer
from infrastructure.kafka.local_broker import LocalBroker
from infrastructure.postgres.store import ensure_database
from infrastructure.redis.view import RedisSlotView
from infrastructure.settings import Settings
from tests.support.bench.common import (
    ROOT,
    Sizes,
    console,
    new_settings,
    pct,
    rss_mib,
    scratch_tag,
    settings_env,
)
from tests.support.scenario import Scenario, generate_load
from tests.support.scratch import drop_scratch

# ----------------------------------------------------------- 4. end to end


class E2EProbe:
    """Reads batch.events.v1 for the whole section; samples the projection lag."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.send_time: dict[str, float] = {}
        self.slot_latency: dict[str, list[float]] = {}
        self.completed: dict[str, set[bytes]] = {}
        self.last_event: dict[str, float] = {}
        self.samples: list[tuple[float, int, int]] = []  # (time, head, projected)
        self._stop = threading.Event()
        self.view = RedisSlotView.from_settings(settings)
        self.store = Bootstrap(settings).batch_service()  # its recorder: the store's head

    async def consume(self, stop: asyncio.Event) -> None:
        consumer = make_consumer(
            self.settings, self.settings.topics.events, group_id=None, fetch_max_wait_ms=20
        )
        await consumer.start()
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=100, max_records=5000)
                now = time.monotonic()
                for records in batches.values():
                    for r in records:
                        tag = r.key.split(b"-b", 1)[0].decode()
                        headers = dict(r.headers)
                        kind = headers["event_type"]
                        self.last_event[tag] = now
                        if kind == b"SlotAssigned":
                            sent = self.send_time.get(headers["correlation_id"].decode())
                            if sent is not None:
                                self.slot_latency.setdefault(tag, []).append(now - sent)
                        elif kind == b"BatchCompleted":
                            self.completed.setdefault(tag, set()).add(r.key)
        finally:
            await consumer.stop()

    def head(self) -> int:
        return self.store.recorder.max_notification_id() or 0

    def sample(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(psycopg.Error, redis.RedisError):
                head = self.head()
                self.samples.append((time.monotonic(), head, self.view.position() or 0))

    def close(self) -> None:
        self.view.close()
        self.store.close()

    def start_sampling(self) -> threading.Thread:
        t = threading.Thread(target=self.sample, daemon=True)
        t.start()
        return t

    def stop_sampling(self) -> None:
        self._stop.set()

    def lag(self, t0: float, t1: float) -> dict[str, float]:
        window = [s for s in self.samples if t0 <= s[0] <= t1]
        events = [float(head - pos) for _, head, pos in window]
        seconds = []
        for i, (t, head, _) in enumerate(window):
            caught = next((u for u, _, pos in window[i:] if pos >= head), None)
            if caught is not None:
                seconds.append(caught - t)
        return {
            "p99_events": pct(events, 99),
            "p99_ms": pct(seconds, 99) * 1000,
            "max_events": max(events, default=float("nan")),
        }


async def produce(
    settings: Settings, probe: E2EProbe, scenario: Scenario, rate: float | None
) -> float:
    topic = settings.topics.by_kind
    cids = [json.loads(m.value)["correlation_id"] for m in scenario.messages]
    producer = make_producer(settings)
    await producer.start()
    start = time.monotonic()
    try:
        pending = []
        for i, (m, cid) in enumerate(zip(scenario.messages, cids, strict=True)):
            if rate is not None:
                due = start + i / rate
                delay = due - time.monotonic()
                if delay > 0.002:
                    await asyncio.sleep(delay)
            probe.send_time.setdefault(cid, time.monotonic())
            pending.append(await producer.send(topic[m.kind], value=m.value, key=m.key.encode()))
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return start


async def e2e_phase(
    settings: Settings, probe: E2EProbe, scenario: Scenario, rate: float | None, wait: float
) -> dict[str, Any]:
    tag = next(iter(scenario.expected)).split("-b", 1)[0]
    batches = len(scenario.expected)
    start = await produce(settings, probe, scenario, rate)
    produced = time.monotonic()
    deadline = time.monotonic() + wait
    while len(probe.completed.get(tag, ())) < batches and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    all_completed = time.monotonic()
    head = probe.head()
    while (probe.view.position() or 0) < head and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    consistent = time.monotonic()
    commands = len(scenario.messages)
    latencies = probe.slot_latency.get(tag, [])
    return {
        "batches": batches,
        "commands": commands,
        "completed": len(probe.completed.get(tag, ())),
        "offered_rate": rate,
        "produce_s": produced - start,
        "seconds": consistent - start,
        "commands_per_s": commands / (consistent - start),
        "completed_after_s": all_completed - start,
        "slot_p50_ms": pct(latencies, 50) * 1000,
        "slot_p99_ms": pct(latencies, 99) * 1000,
        "slot_samples": len(latencies),
        **{f"projection_lag_{k}": v for k, v in probe.lag(start, consistent).items()},
    }


def check_read_model(settings: Settings, scenario: Scenario) -> int:
    view = RedisSlotView.from_settings(settings)
    wrong = 0
    try:
        for batch_id, exp in scenario.expected.items():
            model = view.read_batch(batch_id)
            summary = model.summary if model else {}
            # Which content turns into excess depends on arrival order; the sums do not.
            assigned, excess = int(summary.get("assigned", -1)), int(summary.get("excess", -1))
            wrong += not (
                summary.get("status") == "completed"
                and summary.get("failed") == str(exp.failed)
                and assigned + excess == exp.assigned + exp.excess
                and assigned + exp.failed >= exp.slots
            )
    finally:
        view.close()
    return wrong


def bench_e2e(sizes: Sizes, mode: str) -> dict[str, Any]:
    broker = LocalBroker(log_path=ROOT / "var" / "bench-broker.log").start()
    s = new_settings(scratch_tag("e2e"), KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers)
    ensure_database(s)
    asyncio.run(ensure_topics(s))
    env = {**os.environ, **settings_env(s)}
    log = open(ROOT / "var" / "bench-service.log", "ab")  # noqa: SIM115
    parts = (
        ["run --no-local-broker"] if mode == "run" else ["worker", "worker", "projector", "outbox"]
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "infrastructure.cli.main", *p.split()],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for p in parts
    ]
    full = generate_load("full", sizes.e2e_full_batches, 25, seed=21)
    half = generate_load("half", sizes.e2e_half_batches, 25, seed=22)
    out: dict[str, Any] = {"mode": mode, "processes": parts}
    probe = E2EProbe(s)

    async def main() -> None:
        stop = asyncio.Event()
        consumer = asyncio.create_task(probe.consume(stop))
        try:
            warm = await e2e_phase(s, probe, generate_load("warm", 20, 25, seed=1), None, 90)
            if warm["completed"] < warm["batches"]:
                raise RuntimeError("the service did not complete the warm-up batches")
            sampler = probe.start_sampling()
            console.print(f"  full rate: {len(full.messages)} commands ...")
            out["full"] = await e2e_phase(s, probe, full, None, 600)
            console.print(f"    {out['full']['commands_per_s']:.0f} commands/s")
            rate = out["full"]["commands_per_s"] / 2
            await asyncio.sleep(1.0)
            console.print(f"  half rate ({rate:.0f}/s): {len(half.messages)} commands ...")
            out["half"] = await e2e_phase(s, probe, half, rate, 600)
            probe.stop_sampling()
            sampler.join(5)
        finally:
            stop.set()
            await consumer

    try:
        asyncio.run(main())
        out["service_rss_mib"] = sum(rss_mib(p.pid) for p in procs)
        wrong = check_read_model(s, full) + check_read_model(s, half)
        verify = subprocess.run(
            [sys.executable, "-m", "infrastructure.cli.main", "verify", "--json"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            check=False,
        )
        out["read_model_wrong_batches"] = wrong
        out["verify_exit"] = verify.returncode
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()
        probe.close()
        broker.stop()
        drop_scratch(s)
    return out
