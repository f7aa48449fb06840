"""Section 4 of the benchmark: end to end through the real broker and `batchctl run`."""

from __future__ import annotations

import asyncio
import contextlib
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
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
import redis

from infrastructure.bootstrap import Bootstrap
from infrastructure.kafka.clients import ensure_topics, make_consumer, make_producer
from infrastructure.kafka.local_broker import LocalBroker, free_port
from infrastructure.postgres.store import ensure_database
from infrastructure.redis.view import RedisSlotView
from infrastructure.settings import Settings
from tests.support.bench.common import (
    ROOT,
    CpuMeter,
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
        self.send_wall: dict[str, float] = {}
        self.slot_latency: dict[str, list[float]] = {}
        # Per SlotAssigned, from wall clocks: send -> decided (the event's timestamp, taken
        # by the worker), decided -> handed to the outbox's producer (the record's
        # CreateTime), producer -> read here.
        self.hops: dict[str, list[tuple[float, float, float]]] = {}
        self.completed: dict[str, set[bytes]] = {}
        self.event_ids: set[bytes] = set()
        self.duplicates = 0  # records of an event already read (replicas must not repeat)
        self.last_event: dict[str, float] = {}
        self.samples: list[tuple[float, int, int]] = []  # (time, head, projected)
        self.first_event: float | None = None  # the service's first output
        self._stop = threading.Event()
        self.view = RedisSlotView.from_settings(settings)
        self.store = Bootstrap(settings).batch_service()  # its recorder: the store's head

    async def consume(self, stop: asyncio.Event) -> None:
        consumer = make_consumer(
            # A short fetch wait of its own: the local broker holds a fetch for the
            # full wait even when records arrive, so this adds at most 5 ms (about 2.5
            # on average) to every latency; 2 ms cost the broker and the benchmark
            # 0.12 core each while idle (5 ms: 0.06-0.07), taken from the service.
            self.settings,
            self.settings.topics.events,
            group_id=None,
            fetch_max_wait_ms=5,
        )
        await consumer.start()
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=100, max_records=5000)
                now = time.monotonic()
                if batches and self.first_event is None:
                    self.first_event = now
                for records in batches.values():
                    for r in records:
                        tag = r.key.split(b"-b", 1)[0].decode()
                        headers = dict(r.headers)
                        kind = headers["event_type"]
                        if headers["event_id"] in self.event_ids:
                            self.duplicates += 1
                        self.event_ids.add(headers["event_id"])
                        self.last_event[tag] = now
                        if kind == b"SlotAssigned":
                            cid = headers["correlation_id"].decode()
                            sent = self.send_time.get(cid)
                            if sent is not None:
                                self.slot_latency.setdefault(tag, []).append(now - sent)
                                wall = time.time()
                                decided = datetime.fromisoformat(
                                    json.loads(r.value)["event_timestamp"]
                                ).timestamp()
                                created = r.timestamp / 1000
                                self.hops.setdefault(tag, []).append(
                                    (
                                        decided - self.send_wall[cid],
                                        created - decided,
                                        wall - created,
                                    )
                                )
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


LIGHT_RATE = 200  # commands/s: light load, for the latency floor


class Producer:
    """ONE long-lived producer for the whole section, sending at once (``linger_ms=0``):
    the benchmark adds no batching delay of its own to the paced latency."""

    def __init__(self, settings: Settings, probe: E2EProbe) -> None:
        self.settings = settings
        self.probe = probe
        self.producer = make_producer(settings, linger_ms=0)

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def send(self, scenario: Scenario, rate: float | None) -> float:
        """Send every message (at ``rate`` per second if given); the first send's time."""
        topic = self.settings.topics.by_kind
        cids = [json.loads(m.value)["correlation_id"] for m in scenario.messages]
        start = time.monotonic()
        pending = []
        for i, (m, cid) in enumerate(zip(scenario.messages, cids, strict=True)):
            if rate is not None:
                delay = start + i / rate - time.monotonic()
                if delay > 0.0005:
                    await asyncio.sleep(delay)
            # The send time of the message's correlation id: SlotAssigned carries it.
            self.probe.send_time.setdefault(cid, time.monotonic())
            self.probe.send_wall.setdefault(cid, time.time())
            pending.append(
                await self.producer.send(topic[m.kind], value=m.value, key=m.key.encode())
            )
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return start


async def wait_done(probe: E2EProbe, scenario: Scenario, wait: float) -> tuple[float, float, int]:
    """Wait until every batch's BatchCompleted is read and Redis is at the store head:
    (time all completed, time consistent, batches completed)."""
    tag = next(iter(scenario.expected)).split("-b", 1)[0]
    batches = len(scenario.expected)
    deadline = time.monotonic() + wait
    while len(probe.completed.get(tag, ())) < batches and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    all_completed = time.monotonic()
    head = probe.head()
    while (probe.view.position() or 0) < head and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return all_completed, time.monotonic(), len(probe.completed.get(tag, ()))


def phase_figures(
    probe: E2EProbe, scenario: Scenario, start: float, done: tuple[float, float, int]
) -> dict[str, Any]:
    tag = next(iter(scenario.expected)).split("-b", 1)[0]
    all_completed, consistent, completed = done
    commands = len(scenario.messages)
    latencies = probe.slot_latency.get(tag, [])
    hops = probe.hops.get(tag, [])
    hop_names = ("send_to_decided", "decided_to_outbox_send", "outbox_send_to_read")
    return {
        **{
            f"hop_{name}_p50_ms": pct([h[i] for h in hops], 50) * 1000
            for i, name in enumerate(hop_names)
        },
        "batches": len(scenario.expected),
        "commands": commands,
        "completed": completed,
        "seconds": consistent - start,
        "commands_per_s": commands / (consistent - start),
        "completed_after_s": all_completed - start,
        "slot_p50_ms": pct(latencies, 50) * 1000,
        "slot_p99_ms": pct(latencies, 99) * 1000,
        "slot_samples": len(latencies),
        **{f"projection_lag_{k}": v for k, v in probe.lag(start, consistent).items()},
    }


WRONG_EXAMPLES: list[dict[str, Any]] = []


def check_read_model(settings: Settings, scenario: Scenario) -> int:
    view = RedisSlotView.from_settings(settings)
    wrong = 0
    try:
        for batch_id, exp in scenario.expected.items():
            model = view.read_batch(batch_id)
            summary = model.summary if model else {}
            # Which content turns into excess depends on arrival order; the sums do not.
            # Failures and contents come on different topics: where the extra contents of
            # an "excess" batch arrive before its failure, they fill every slot, the batch
            # completes, and the late failure changes nothing (CONTRACT: a failure after
            # close). So a batch may count fewer failures, but only if its contents
            # filled it.
            assigned, excess = int(summary.get("assigned", -1)), int(summary.get("excess", -1))
            failed = int(summary.get("failed", -1))
            bad = not (
                summary.get("status") == "completed"
                and assigned + excess == exp.assigned + exp.excess
                and assigned + failed >= exp.slots
                and (failed == exp.failed or (0 <= failed < exp.failed and assigned == exp.slots))
            )
            wrong += bad
            if bad and len(WRONG_EXAMPLES) < 5:
                WRONG_EXAMPLES.append({"summary": dict(summary), "expected": vars(exp)})
    finally:
        view.close()
    return wrong


def service_parts(mode: str, workers: int) -> list[str]:
    if mode == "run":
        return ["run --no-local-broker"]
    if mode == "replicas":  # ``workers`` replicas of `batchctl run`: the followers spread
        return ["run --no-local-broker"] * workers
    return ["worker"] * workers + ["projector", "outbox"]


def start_service(
    parts: list[str], env: dict[str, str], log: Any, ports: dict[int, int] | None = None
) -> list[subprocess.Popen[bytes]]:
    """The service's processes; ``ports``: process index -> its METRICS_PORT (/readyz)."""
    return [
        subprocess.Popen(
            [sys.executable, "-m", "infrastructure.cli.main", *part.split()],
            env={**env, **({"METRICS_PORT": str(ports[i])} if ports and i in ports else {})},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for i, part in enumerate(parts)
    ]


def assigned_partitions(port: int) -> int:
    """The partitions a worker's consumer holds now, from its /readyz (0 if unknown)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            body = r.read()
    except urllib.error.HTTPError as e:
        body = e.read()
    except OSError:
        return 0
    detail = json.loads(body).get("checks", {}).get("consumer", {}).get("detail", "")
    m = re.search(r"assigned (\d+) partition", detail)
    return int(m.group(1)) if m else 0


async def wait_settled(ports: list[int], total: int, timeout: float = 120) -> float:
    """Until every worker holds partitions and together all ``total``, unchanged for 1 s."""
    start = time.monotonic()
    last, since = None, time.monotonic()
    while time.monotonic() - start < timeout:
        now = tuple(await asyncio.to_thread(lambda: [assigned_partitions(p) for p in ports]))
        if now != last:
            last, since = now, time.monotonic()
        elif all(now) and sum(now) == total and time.monotonic() - since >= 1.0:
            return time.monotonic() - start
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the consumer group did not settle: {last}")


COUNTED = (
    "batchslot_version_conflicts_total",  # appends that lost the race and were retried
    "batchslot_messages_consumed_total",  # inbound messages handled (every outcome)
    "batchslot_transient_failures_total",  # e.g. ConcurrencyExhausted, retried
    "batchslot_command_seconds_count",  # polls decided and stored (execute calls)
)


def scrape(port: int) -> dict[str, float]:
    """The counters in ``COUNTED`` (summed over labels) on one process's /metrics."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        metric = name.split("{", 1)[0]
        if metric in COUNTED:
            out[metric] = out.get(metric, 0.0) + float(value)
    return out


async def counters(
    ports: dict[str, int], handled: int | None = None, wait: float = 30
) -> dict[str, dict[str, float]]:
    """Per process (name -> its METRICS_PORT): the counters now. ``handled``: first wait
    (up to ``wait`` s) until the workers have handled that many inbound messages in all
    (late duplicates and failures of completed batches are still being handled when the
    last batch completes)."""
    deadline = time.monotonic() + wait
    while True:
        now = {n: await asyncio.to_thread(scrape, p) for n, p in ports.items()}
        total = sum(c.get("batchslot_messages_consumed_total", 0.0) for c in now.values())
        if handled is None or total >= handled or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.1)


def counted(
    after: dict[str, dict[str, float]], before: dict[str, dict[str, float]], commands: int
) -> dict[str, Any]:
    """A phase's conflict retries (all processes) and inbound messages per process."""

    def delta(name: str, metric: str) -> float:
        return after.get(name, {}).get(metric, 0.0) - before.get(name, {}).get(metric, 0.0)

    conflicts = sum(delta(n, "batchslot_version_conflicts_total") for n in after)
    return {
        "version_conflicts": conflicts,
        "conflicts_per_1000": conflicts * 1000 / commands,
        "transient_failures": sum(delta(n, "batchslot_transient_failures_total") for n in after),
        "polls": sum(delta(n, "batchslot_command_seconds_count") for n in after),
        "handled_per_process": {
            n: delta(n, "batchslot_messages_consumed_total")
            for n in after
            if delta(n, "batchslot_messages_consumed_total")
        },
    }


def start_profilers(
    parts: list[str], procs: list[subprocess.Popen[bytes]], name: str, log: Any
) -> list[subprocess.Popen[bytes]]:
    """py-spy on every service process: every thread (the worker's to_thread calls too),
    raw folded stacks in var/<name>-<i>-<part>.txt, written when it gets SIGINT."""
    spy = str(Path(sys.executable).parent / "py-spy")
    return [
        subprocess.Popen(
            [
                spy,
                "record",
                "--gil",
                "--nonblocking",
                "-r",
                "100",
                "-f",
                "raw",
                "-p",
                str(proc.pid),
                "-o",
                str(ROOT / "var" / f"{name}-{i}-{part.split()[0]}.txt"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for i, (part, proc) in enumerate(zip(parts, procs, strict=True))
    ]


def stop_profilers(spies: list[subprocess.Popen[bytes]]) -> None:
    """Let every py-spy write its samples (SIGINT), then wait for them."""
    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        spy.wait(60)


def bench_e2e(
    sizes: Sizes,
    mode: str,
    *,
    workers: int = 2,
    partitions: int | None = None,
    drain_batches: int | None = None,
    paced: bool = True,
    profile: str | None = None,
    settle_first: bool = False,
    keys: Literal["batch", "file"] = "batch",
) -> dict[str, Any]:
    """Drain a backlog produced before the service starts, then (``paced``) a paced phase
    at half the drain rate. ``mode``: ``run`` (one `batchctl run`), ``split``
    (``workers`` workers + projector + outbox processes) or ``replicas`` (``workers``
    `batchctl run` replicas, the followers spread over them by their leases).
    ``settle_first`` (the scale rows): start the service first, wait until its
    consumer group has settled (every worker's /readyz), then produce the backlog: the
    drain is timed from the first send, so rebalances while members join are not what
    is measured. ``keys``: the Kafka key of content and validation failures
    (``generate_load``'s ``keys``). Every process serves /metrics on a port of its own:
    each phase reports its version conflicts."""
    broker = LocalBroker(log_path=ROOT / "var" / "bench-broker.log").start()
    extra = {"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers}
    if partitions:
        extra["KAFKA_TOPIC_PARTITIONS"] = str(partitions)
    s = new_settings(scratch_tag("e2e"), **extra)
    ensure_database(s)
    asyncio.run(ensure_topics(s))
    env = {**os.environ, **settings_env(s)}
    if partitions:
        env["KAFKA_TOPIC_PARTITIONS"] = str(partitions)
    log = open(ROOT / "var" / "bench-service.log", "ab")  # noqa: SIM115
    parts = service_parts(mode, workers)
    drain = generate_load("drain", drain_batches or sizes.e2e_full_batches, 25, seed=21, keys=keys)
    half = generate_load("half", sizes.e2e_half_batches, 25, seed=22, keys=keys)
    light = (
        generate_load("light", sizes.e2e_light_batches, 25, seed=23, keys=keys) if paced else None
    )
    out: dict[str, Any] = {
        "mode": mode,
        "processes": parts,
        "partitions": s.kafka_topic_partitions,
        "keys": keys,
    }
    probe = E2EProbe(s)
    procs: list[subprocess.Popen[bytes]] = []
    spies: list[subprocess.Popen[bytes]] = []

    async def main() -> None:
        stop = asyncio.Event()
        consumer = asyncio.create_task(probe.consume(stop))
        producer = Producer(s, probe)
        await producer.start()
        try:
            ports = {i: free_port() for i in range(len(parts))}
            workers_ports = [ports[i] for i, p in enumerate(parts) if p == "worker"]
            by_name = {f"{i}-{p.split()[0]}": ports[i] for i, p in enumerate(parts)}
            if settle_first:
                procs.extend(start_service(parts, env, log, ports))
                settled = await wait_settled(workers_ports, 3 * s.kafka_topic_partitions)
                console.print(f"  group settled after {settled:.1f}s; backlog ...")
            else:
                console.print(f"  backlog: {len(drain.messages):,} commands, service stopped")
                t = time.monotonic()
                await producer.send(drain, None)
                out["backlog_produce_s"] = time.monotonic() - t
                procs.extend(start_service(parts, env, log, ports))
            started = time.monotonic()
            sampler = probe.start_sampling()
            names = [f"{i}-{p.split()[0]}" for i, p in enumerate(parts)]
            meter = CpuMeter(
                {
                    **{n: [proc.pid] for n, proc in zip(names, procs, strict=True)},
                    "broker": [broker.pid] if broker.pid else [],
                }
            )
            if settle_first:  # timed from the first send of the backlog
                meter.start()
                sending = asyncio.create_task(producer.send(drain, None))
                await asyncio.sleep(0)
            else:  # timed from the service's first output
                while probe.first_event is None and time.monotonic() - started < 120:
                    await asyncio.sleep(0.01)
                meter.start()
            if profile:
                spies.extend(start_profilers(parts, procs, profile, log))
            done = await wait_done(probe, drain, 900)
            cpu = meter.stop()
            stop_profilers(spies)
            if settle_first:
                started = await sending
            first = started if settle_first else (probe.first_event or started)
            handled = len(drain.messages)
            after_drain = await counters(by_name, handled)
            out["drain"] = {
                **phase_figures(probe, drain, first, done),
                **counted(after_drain, {}, len(drain.messages)),
                "startup_s": first - started,
                "commands_per_s_from_start": len(drain.messages) / (done[1] - started),
                # core-seconds per 1,000 commands, per component (machine-wide for
                # PostgreSQL and Redis), from the first output to the end of the drain
                "cpu_s_per_1000": {k: v * 1000 / len(drain.messages) for k, v in cpu.items()},
            }
            console.print(
                f"    drained at {out['drain']['commands_per_s']:,.0f} commands/s "
                f"(first output {first - started:.1f}s after the start; "
                f"{out['drain']['version_conflicts']:,.0f} version conflicts)"
            )
            if paced:
                rate = out["drain"]["commands_per_s"] / 2
                await asyncio.sleep(1.0)
                console.print(f"  paced at {rate:,.0f}/s: {len(half.messages):,} commands ...")
                meter.start()
                if profile:
                    spies[:] = start_profilers(parts, procs, f"{profile}-paced", log)
                start = await producer.send(half, rate)
                paced_done = await wait_done(probe, half, 600)
                cpu = meter.stop()
                stop_profilers(spies)
                handled += len(half.messages)
                after_paced = await counters(by_name, handled)
                out["paced"] = {
                    **phase_figures(probe, half, start, paced_done),
                    **counted(after_paced, after_drain, len(half.messages)),
                    "offered_rate": rate,
                    "cpu_s_per_1000": {k: v * 1000 / len(half.messages) for k, v in cpu.items()},
                }
                console.print(
                    f"    p50 {out['paced']['slot_p50_ms']:.1f} ms, "
                    f"p99 {out['paced']['slot_p99_ms']:.1f} ms"
                )
            if paced and light is not None:
                # The floor: the same path at a light fixed rate, where nothing queues.
                await asyncio.sleep(1.0)
                console.print(f"  light load at {LIGHT_RATE}/s: {len(light.messages):,} commands")
                meter.start()
                if profile:
                    spies[:] = start_profilers(parts, procs, f"{profile}-light", log)
                start = await producer.send(light, LIGHT_RATE)
                light_done = await wait_done(probe, light, 300)
                cpu = meter.stop()
                stop_profilers(spies)
                handled += len(light.messages)
                out["light"] = {
                    **phase_figures(probe, light, start, light_done),
                    **counted(await counters(by_name, handled), after_paced, len(light.messages)),
                    "offered_rate": LIGHT_RATE,
                    # mostly what every second costs (fetches, timers) over 200 commands
                    "cpu_s_per_1000": {k: v * 1000 / len(light.messages) for k, v in cpu.items()},
                }
                console.print(
                    f"    p50 {out['light']['slot_p50_ms']:.1f} ms, "
                    f"p99 {out['light']['slot_p99_ms']:.1f} ms"
                )
            probe.stop_sampling()
            sampler.join(5)
        finally:
            await producer.stop()
            stop.set()
            await consumer

    try:
        asyncio.run(main())
        out["service_rss_mib"] = sum(rss_mib(p.pid) for p in procs)
        wrong = check_read_model(s, drain)
        if paced:
            wrong += check_read_model(s, half)
        if "light" in out and light is not None:
            wrong += check_read_model(s, light)
        verify = subprocess.run(
            [sys.executable, "-m", "infrastructure.cli.main", "verify", "--json"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            check=False,
        )
        out["read_model_wrong_batches"] = wrong
        out["wrong_examples"] = WRONG_EXAMPLES[:5]
        out["verify_exit"] = verify.returncode
        out["published_events"] = len(probe.event_ids)
        out["published_duplicates"] = probe.duplicates
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()
        probe.close()
        broker.stop()
        drop_scratch(s)
    return out


def bench_scale_e2e(sizes: Sizes) -> dict[str, Any]:
    """Split mode with 1, 2 and 4 worker processes on 6 partitions (drain)."""
    out: dict[str, Any] = {}
    for workers in (1, 2, 4):
        console.print(f"  split, {workers} worker(s), 6 partitions")
        r = bench_e2e(
            sizes,
            "split",
            workers=workers,
            partitions=6,
            drain_batches=sizes.scale_batches,
            paced=False,
            settle_first=True,
        )
        out[f"workers_{workers}"] = {
            **r["drain"],
            "verify_exit": r["verify_exit"],
            "read_model_wrong_batches": r["read_model_wrong_batches"],
        }
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _service_cpu(phase: dict[str, Any]) -> float:
    """Core-s per 1,000 commands of the service's own processes ("0-worker", ...)."""
    return float(sum(v for k, v in phase["cpu_s_per_1000"].items() if k[:1].isdigit()))


def bench_keys(sizes: Sizes) -> dict[str, Any]:
    """HuleEdu's real keys: split mode, 2 workers, content and validation failures keyed
    by ``file_upload_id`` (as the File Service sends them; registrations keep the batch
    id) against keyed by batch id, same scenario, one after the other. Keyed by file, one
    batch's files land on both workers, which then contend on its stream: version
    conflicts, retried on fresh state."""
    out: dict[str, Any] = {}
    order: tuple[Literal["batch", "file"], ...] = ("batch", "file")
    for keys in order:
        console.print(f"  split, 2 workers, content and failures keyed by {keys}")
        out[f"by_{keys}"] = bench_e2e(sizes, "split", workers=2, keys=keys)
    by_batch, by_file = out["by_batch"], out["by_file"]
    cmp: dict[str, Any] = {}
    for phase in ("drain", "paced", "light"):
        if phase not in by_batch or phase not in by_file:
            continue
        b, f = by_batch[phase], by_file[phase]
        cmp[phase] = {
            "commands_per_s_ratio": _ratio(f["commands_per_s"], b["commands_per_s"]),
            "conflicts_by_file": f["version_conflicts"],
            "conflicts_by_batch": b["version_conflicts"],
            # None when keyed by batch had none (as it should: one worker per batch)
            "conflicts_ratio": (
                f["version_conflicts"] / b["version_conflicts"] if b["version_conflicts"] else None
            ),
            "conflicts_per_1000_by_file": f["conflicts_per_1000"],
            "conflicts_per_1000_by_batch": b["conflicts_per_1000"],
            "slot_p50_ratio": _ratio(f["slot_p50_ms"], b["slot_p50_ms"]),
            "slot_p99_ratio": _ratio(f["slot_p99_ms"], b["slot_p99_ms"]),
            # (a run without CPU figures in a phase: none)
            **(
                {
                    "service_cpu_s_per_1000_by_file": _service_cpu(f),
                    "service_cpu_s_per_1000_by_batch": _service_cpu(b),
                    "service_cpu_ratio": _ratio(_service_cpu(f), _service_cpu(b)),
                }
                if "cpu_s_per_1000" in b and "cpu_s_per_1000" in f
                else {}
            ),
        }
        console.print(
            f"    {phase}: {f['commands_per_s']:,.0f} vs {b['commands_per_s']:,.0f} commands/s "
            f"(x{cmp[phase]['commands_per_s_ratio']:.2f}); conflicts "
            f"{f['version_conflicts']:,.0f} vs {b['version_conflicts']:,.0f} "
            f"({f['conflicts_per_1000']:.1f} vs {b['conflicts_per_1000']:.1f} per 1,000 "
            f"commands); p50/p99 {f['slot_p50_ms']:.0f}/{f['slot_p99_ms']:.0f} vs "
            f"{b['slot_p50_ms']:.0f}/{b['slot_p99_ms']:.0f} ms"
        )
    out["file_vs_batch"] = cmp
    return out
