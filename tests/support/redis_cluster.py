"""A real, local Redis Cluster for the tests: six ``redis-server`` processes.

Three primaries and three replicas on free loopback ports, in cluster mode,
joined by ``redis-cli --cluster create --cluster-replicas 1``; each node keeps
its files in its own directory under a temporary directory that ``stop()``
removes. Nothing is persisted (no RDB, no AOF): a node's data lives in its
memory and in its replica's. The node timeout is short so that a killed
primary's replica takes over within a few seconds.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

NODE_TIMEOUT_MS = 1000  # a primary silent this long is failing; its replica takes over


class ClusterNotReady(RuntimeError):
    """The cluster did not reach cluster_state:ok in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _free_ports(count: int) -> list[int]:
    """Ports free for a node AND its cluster bus (port + 10000)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


@dataclass
class LocalRedisCluster:
    nodes: int = 6
    replicas: int = 1
    host: str = "127.0.0.1"
    ports: list[int] = field(default_factory=list)
    _dir: Path | None = None
    _procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    # ------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        """A cluster URL naming every node as a start-up node (the service's form)."""
        hosts = ",".join(f"{self.host}:{p}" for p in self.ports)
        return f"redis+cluster://{hosts}/0"

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host=self.host, port=port, socket_timeout=5, decode_responses=True)

    # -------------------------------------------------------------- running

    def start(self, timeout: float = 60.0) -> LocalRedisCluster:
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise RuntimeError("redis-server and redis-cli are needed (Debian: redis-server)")
        self._dir = Path(tempfile.mkdtemp(prefix="redis-cluster-"))
        self.ports = _free_ports(self.nodes)
        try:
            for port in self.ports:
                self._start_node(port)
            for port in self.ports:
                self._wait_answers(port, timeout)
            subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(f"{self.host}:{p}" for p in self.ports),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=timeout,
            )
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for port in list(self._procs):
            self.kill(port)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def kill(self, port: int) -> None:
        """SIGKILL one node (no shutdown save: nothing is persisted anyway)."""
        proc = self._procs.pop(port, None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def restart(self, port: int) -> None:
        """Start a killed node again with its cluster config (it rejoins, as a replica
        when its replica was promoted meanwhile)."""
        self._start_node(port)
        self._wait_answers(port, 30.0)

    # ------------------------------------------------------------ inspection

    def primaries(self) -> list[int]:
        """Ports of the running nodes that are primaries now."""
        found = []
        for port in self._procs:
            with contextlib.suppress(redis.RedisError):
                c = self.client(port)
                try:
                    if c.info("replication").get("role") == "master":
                        found.append(port)
                finally:
                    c.close()
        return found

    def primary_of(self, key: str) -> int:
        """The port of the primary that holds ``key``'s slot now."""
        for port in self.primaries():
            c = self.client(port)
            try:
                slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))  # type: ignore[no-untyped-call]
                slots = c.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
                for start, end, primary, *_ in slots:
                    if int(start) <= slot <= int(end):
                        return int(primary[1])
            finally:
                c.close()
        raise RuntimeError(f"no primary holds the slot of {key!r}")

    def wait_ok(self, timeout: float = 60.0, *, primaries: int | None = None) -> None:
        """Until every running node says cluster_state:ok, every running replica is in
        sync with its primary and there are ``primaries`` primaries (3 by default);
        else ClusterNotReady."""
        want = primaries if primaries is not None else self.nodes // (self.replicas + 1)
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for port in self._procs:
                c = self.client(port)
                try:
                    info = c.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
                    replication = c.info("replication")
                    synced = replication.get("role") == "master" or (
                        replication.get("master_link_status") == "up"
                    )
                    states.append("cluster_state:ok" in info and synced)
                except redis.RedisError:
                    states.append(False)
                finally:
                    c.close()
            if all(states) and len(self.primaries()) == want:
                return
            if time.monotonic() > deadline:
                raise ClusterNotReady(f"cluster not ok within {timeout:.0f}s: {states}")
            time.sleep(0.1)

    # -------------------------------------------------------------- helpers

    def _start_node(self, port: int) -> None:
        assert self._dir is not None
        data = self._dir / str(port)
        data.mkdir(exist_ok=True)
        log = open(data / "redis.log", "ab")  # noqa: SIM115
        self._procs[port] = subprocess.Popen(
            [
                "redis-server",
                "--port", str(port),
                "--bind", self.host,
                "--dir", str(data),
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--cluster-replica-validity-factor", "0",  # a replica may always take over
                "--save", "",
                "--appendonly", "no",
                "--repl-diskless-sync-delay", "0",  # a replica syncs at once
                "--protected-mode", "no",
                "--daemonize", "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()

    def _wait_answers(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            proc = self._procs[port]
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {port} exited {proc.returncode}")
            c = self.client(port)
            try:
                if c.ping():
                    return
            except redis.RedisError:
                pass
            finally:
                c.close()
            if time.monotonic() > deadline:
                raise ClusterNotReady(f"redis-server on port {port} does not answer")
            time.sleep(0.05)
