"""/metrics, /healthz and /readyz on METRICS_PORT (stdlib HTTP server in a thread).

- ``/metrics``: prometheus_client's exposition (OpenMetrics when the scraper asks).
- ``/healthz``: the process's asyncio loop is alive: a heartbeat task beats
  every second; 503 when it has not beaten for HEALTHZ_MAX_SILENCE_SECONDS (a
  loop blocked by a synchronous call, or wedged). Restart on failure.
- ``/readyz``: every check of the process passes (``infrastructure/health/checks.py``):
  200 with the JSON of all checks, else 503 with the failing ones named in
  ``failing``. Until every part has started (start-up waits for its
  dependencies) it answers 503 with the check ``startup``.
- anything else: 404.

The server runs in its own threads, so it answers even when the loop is stuck
(that is what /healthz reports). Checks that talk to a server are bounded and
cached (``Probe``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from infrastructure import metrics
from infrastructure.health.metering import set_build_info
from infrastructure.settings import Settings, SettingsError

log = logging.getLogger("batchslot.health")
HEARTBEAT_SECONDS = 1.0


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


CheckFn = Callable[[], Check]


class Probe:
    """A check that talks to a server: bounded, cached, one call in flight at a time.

    ``fn`` returns a detail for the operator, or raises. A result is reused for
    ``ttl`` seconds (scrapes do not hammer the servers); a call that does not
    return within ``timeout`` fails the check, and the next check waits on that
    same call instead of starting another one.
    """

    _pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="readyz-probe")

    def __init__(self, fn: Callable[[], str], timeout: float, ttl: float) -> None:
        self.fn, self.timeout, self.ttl = fn, timeout, ttl
        self._lock = threading.Lock()
        self._cached: tuple[float, Check] | None = None
        self._running: Future[str] | None = None
        self._started = 0.0

    def __call__(self) -> Check:
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.ttl:
                return self._cached[1]
            if self._running is None:
                self._running, self._started = self._pool.submit(self.fn), now
            running, started = self._running, self._started
        try:
            check = Check(True, running.result(max(0.0, started + self.timeout - now)))
        except FutureTimeout:
            waited = time.monotonic() - started
            return Check(False, f"no answer within {self.timeout:g}s (waiting {waited:.1f}s)")
        except Exception as e:
            check = Check(False, f"{type(e).__name__}: {e}"[:300])
        with self._lock:
            if self._running is running:
                self._running = None
                self._cached = (time.monotonic(), check)
        return check


class Health:
    """The process's liveness (heartbeat) and readiness (named checks)."""

    def __init__(self, max_silence: float, secrets: Sequence[str] = ()) -> None:
        self.max_silence = max_silence
        # A probe's error text goes out over HTTP: no known secret in it (as in the logs).
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self.last_beat = time.monotonic()
        self.checks: dict[str, CheckFn] | None = None  # None: still starting
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="readyz")
        self.task: asyncio.Task[None] | None = None  # the heartbeat (kept referenced)

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    async def heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=HEARTBEAT_SECONDS)

    def live(self) -> Check:
        silence = time.monotonic() - self.last_beat
        if silence > self.max_silence:
            return Check(False, f"event loop silent for {silence:.1f}s")
        return Check(True, f"event loop beat {silence:.1f}s ago")

    def ready_with(self, checks: Mapping[str, CheckFn]) -> None:
        """Every part has started: /readyz now runs these checks."""
        self.checks = dict(checks)

    def _redacted(self, check: Check) -> Check:
        detail = check.detail
        for secret in self.secrets:
            detail = detail.replace(secret, "***")
        return check if detail == check.detail else Check(check.ok, detail)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        results: dict[str, Check] = {"loop": self.live()}
        if self.checks is None:
            results["startup"] = Check(False, "starting: waiting for its dependencies")
        else:
            futures = {name: self._pool.submit(fn) for name, fn in self.checks.items()}
            for name, future in futures.items():
                try:
                    results[name] = future.result()
                except Exception as e:  # a check's own bug must not hide the others
                    results[name] = Check(False, f"check failed: {e!r}"[:300])
        results = {name: self._redacted(c) for name, c in results.items()}
        failing = [name for name, c in results.items() if not c.ok]
        metrics.READY.set(0 if failing else 1)
        for name, c in results.items():
            metrics.READINESS_CHECK.labels(name).set(1 if c.ok else 0)
        body = {
            "status": "not ready" if failing else "ready",
            "failing": failing,
            "checks": {name: c.as_json() for name, c in results.items()},
        }
        return not failing, body


class _Handler(BaseHTTPRequestHandler):
    health: Health  # set on the subclass made per server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self.health.ready()  # batchslot_ready and batchslot_readiness_check_ok, fresh
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, encoder(REGISTRY), content_type)
        elif path == "/healthz":
            check = self.health.live()
            status = {"status": "ok" if check.ok else "failing", "loop": check.as_json()}
            self._json(200 if check.ok else 503, status)
        elif path == "/readyz":
            ok, body = self.health.ready()
            self._json(200 if ok else 503, body)
        else:
            self._json(404, {"error": "not found", "paths": ["/metrics", "/healthz", "/readyz"]})

    def _json(self, status: int, body: Mapping[str, Any]) -> None:
        self._send(status, (json.dumps(body) + "\n").encode(), "application/json")

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds are not worth a log line


class HealthServer:
    """The HTTP server of one process (None port: no server, checks still kept)."""

    def __init__(self, health: Health, port: int | None, host: str = "0.0.0.0") -> None:  # noqa: S104
        self.health = health
        self._server: ThreadingHTTPServer | None = None
        if port is not None:
            handler = type("Handler", (_Handler,), {"health": health})
            try:
                self._server = ThreadingHTTPServer((host, port), handler)
            except OSError as e:  # in use (two processes on one host with one METRICS_PORT)
                raise SettingsError(
                    f"METRICS_PORT: cannot serve on port {port} ({e.strerror or e}): another "
                    "process on this host uses it; give each process its own METRICS_PORT "
                    "(0: any free port)"
                ) from None
            self._server.daemon_threads = True
            threading.Thread(
                target=self._server.serve_forever, name="metrics-http", daemon=True
            ).start()

    @property
    def port(self) -> int | None:
        return None if self._server is None else int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


async def start_health(settings: Settings, stop: asyncio.Event) -> Health:
    """Serve METRICS_PORT and beat the heartbeat until ``stop`` (or cancellation).

    Called first thing in ``runtime.serve``; ``Health.ready_with`` is called once
    every part has started.
    """
    set_build_info()
    health = Health(settings.healthz_max_silence_seconds, settings.secrets())
    server = HealthServer(health, settings.metrics_port)

    async def beat() -> None:
        try:
            await health.heartbeat(stop)
        finally:
            await asyncio.to_thread(server.close)

    task = asyncio.create_task(beat(), name="heartbeat")
    health.task = task
    return health
