"""The health server's own logic: heartbeat, probe bounds and cache, routes.

Real HTTP on loopback; the checks here are plain functions (the probes of the
real servers are exercised by tests/e2e/test_health.py).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from infrastructure.health.server import Check, Health, HealthServer, Probe


def get(port: int, path: str) -> tuple[int, dict[str, Any] | str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            status, body = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read().decode()
    return status, (json.loads(body) if body.startswith("{") else body)


@pytest.fixture
def served() -> Iterator[tuple[Health, int]]:
    health = Health(max_silence=30.0)
    server = HealthServer(health, 0, host="127.0.0.1")
    assert server.port
    yield health, server.port
    server.close()


def test_routes_and_readiness(served: tuple[Health, int]) -> None:
    health, port = served
    status, body = get(port, "/readyz")
    assert status == 503 and isinstance(body, dict) and body["failing"] == ["startup"]
    health.ready_with({"a": lambda: Check(True, "fine"), "b": lambda: Check(False, "down")})
    status, body = get(port, "/readyz")
    assert status == 503 and isinstance(body, dict), body
    assert body["failing"] == ["b"] and body["checks"]["a"] == {"ok": True, "detail": "fine"}
    health.ready_with({"a": lambda: Check(True, "fine")})
    status, body = get(port, "/readyz?verbose=1")
    assert status == 200 and isinstance(body, dict) and body["status"] == "ready"
    assert set(body["checks"]) == {"loop", "a"}
    status, metrics = get(port, "/metrics")
    assert status == 200 and isinstance(metrics, str) and "batchslot_build_info" in metrics
    assert get(port, "/")[0] == 404 and get(port, "/metricsx")[0] == 404


def test_healthz_fails_when_the_loop_stops_beating(served: tuple[Health, int]) -> None:
    health, port = served
    health.beat()
    assert get(port, "/healthz")[0] == 200
    health.last_beat -= 31.0  # as if the loop had not beaten for 31 s (> 30 s)
    status, body = get(port, "/healthz")
    assert status == 503 and isinstance(body, dict) and body["status"] == "failing", body
    assert get(port, "/readyz")[0] == 503


def test_a_probe_is_bounded_cached_and_never_piles_up() -> None:
    release, calls = threading.Event(), []

    def slow() -> str:
        calls.append(1)
        release.wait(10)
        return "answered"

    probe = Probe(slow, timeout=0.2, ttl=60)
    first = probe()
    assert not first.ok and "no answer within 0.2s" in first.detail
    assert not probe().ok  # waits on the same call: no second one started
    assert len(calls) == 1
    release.set()
    deadline = time.monotonic() + 10
    while not (result := probe()).ok and time.monotonic() < deadline:
        time.sleep(0.05)
    assert result == Check(True, "answered")
    assert probe() == result and len(calls) == 1  # cached for ttl

    def broken() -> str:
        raise ConnectionRefusedError("refused")

    failing = Probe(broken, timeout=1, ttl=0)
    assert failing() == Check(False, "ConnectionRefusedError: refused")


def test_no_secret_in_a_check_detail() -> None:
    health = Health(max_silence=30.0, secrets=["s3cret"])
    health.ready_with({"postgres": lambda: Check(False, "auth failed for s3cret@db")})
    ok, body = health.ready()
    assert not ok and body["checks"]["postgres"]["detail"] == "auth failed for ***@db"
