"""The partition proxy (tests/support/proxy.py) against the real Redis server.

Raw sockets speaking RESP, so that each assertion is about one connection
(a Redis client would reconnect on its own).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.conftest import TEST_REDIS_URL
from tests.support.proxy import ProxyThread

SILENCE = 0.5  # seconds of silence taken as "no answer"


@pytest.fixture
def proxy() -> Iterator[ProxyThread]:
    parts = urlsplit(TEST_REDIS_URL)
    p = ProxyThread(parts.hostname or "127.0.0.1", parts.port or 6379).start()
    yield p
    p.stop()


def connection(proxy: ProxyThread) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=SILENCE)
    return s


def ping(s: socket.socket) -> bytes:
    """PING on this connection: b'+PONG', or b'' on silence (timeout)."""
    s.sendall(b"PING\r\n")
    try:
        return s.recv(64).strip()
    except TimeoutError:
        return b""


def test_pass_forwards_both_ways(proxy: ProxyThread) -> None:
    with connection(proxy) as s:
        assert ping(s) == b"+PONG"
        payload = b"x" * 300_000
        s.settimeout(5)
        s.sendall(b"*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n" % (len(payload), payload))
        received = b""
        while len(received) < len(payload) + 10:
            chunk = s.recv(65536)
            if not chunk:
                break
            received += chunk
        assert payload in received


def test_partition_holds_connections_silent(proxy: ProxyThread) -> None:
    with connection(proxy) as held:
        assert ping(held) == b"+PONG"
        proxy.partition()
        assert ping(held) == b""
        with connection(proxy) as fresh:  # accepted, then silence
            assert ping(fresh) == b""
        assert proxy.stranded >= 1


def test_heal_with_reset_closes_held_connections(proxy: ProxyThread) -> None:
    with connection(proxy) as held:
        assert ping(held) == b"+PONG"
        proxy.partition()
        assert ping(held) == b""
        assert proxy.heal(reset=True) == 1
        held.settimeout(5)
        # The held connection was closed: end of stream or a reset, not silence.
        with contextlib.suppress(ConnectionResetError):
            assert held.recv(64) == b""
    with connection(proxy) as fresh:
        assert ping(fresh) == b"+PONG"
    assert proxy.stranded == 0


def test_heal_with_stranded_connections_keeps_the_held_ones_silent(proxy: ProxyThread) -> None:
    with connection(proxy) as held:
        assert ping(held) == b"+PONG"
        proxy.partition()
        assert proxy.heal(reset=False) == 1
        with connection(proxy) as fresh:  # new connections pass
            assert ping(fresh) == b"+PONG"
        for _ in range(3):  # the held one stays open and silent
            assert ping(held) == b""
        assert proxy.stranded == 1
