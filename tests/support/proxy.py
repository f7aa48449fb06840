"""A TCP proxy that can partition the network, for fault tests.

An asyncio forwarder on a loopback port in front of a real server. Modes:

- ``pass``: bytes flow both ways.
- ``partition()``: nothing flows either way; connections stay open (the
  client sees silence, as when packets are dropped), new connections are
  accepted and held silent too.
- ``heal(reset=True)``: every connection held during the partition is closed
  (the client sees a reset: what most failovers look like), new ones pass.
- ``heal(reset=False)``: new connections pass, but those held during the
  partition stay open and silent forever (a database that failed over to
  another host, or a NAT or load balancer that dropped the flow without
  telling anyone).

``ProxyThread`` runs one in a background thread for synchronous callers
(pytest tests that start the service as a process, scripts/chaos.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
CHUNK = 65536


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    silent: bool = False  # held during a partition: never forwards again
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.transport.abort()  # RST, not a polite FIN
        for task in self.tasks:
            task.cancel()


class PartitionProxy:
    def __init__(
        self, target_host: str, target_port: int, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.target = (target_host, target_port)
        self.host, self._port = host, port
        self.partitioned = False
        self.links: set[_Link] = set()
        self.accepted = 0
        self._server: asyncio.base_events.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> PartitionProxy:
        self._server = await asyncio.start_server(self._accept, self.host, self._port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self.links):
            link.close()
        self.links.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    # -------------------------------------------------------------- modes

    def partition(self) -> None:
        self.partitioned = True
        for link in self.links:
            link.silent = True

    def heal(self, *, reset: bool) -> int:
        """End the partition; return how many held connections were reset (or stranded)."""
        self.partitioned = False
        held = [link for link in self.links if link.silent]
        if reset:
            for link in held:
                link.close()
                self.links.discard(link)
        return len(held)

    @property
    def stranded(self) -> int:
        return sum(1 for link in self.links if link.silent)

    # ---------------------------------------------------------- forwarding

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer, silent=self.partitioned)
        self.links.add(link)
        if not link.silent:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                link.close()
                self.links.discard(link)
                return
            link.upstream = up_writer
            link.tasks.append(asyncio.create_task(self._pump(link, up_reader, writer)))
        link.tasks.append(asyncio.create_task(self._pump(link, reader, link.upstream)))

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter | None,
    ) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                if link.silent or writer is None:
                    continue  # dropped on the floor, the connection stays open
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            if not link.silent:  # a real close passes through; a held one stays open
                link.close()
                self.links.discard(link)


class ProxyThread:
    """A ``PartitionProxy`` on its own event loop in a daemon thread."""

    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.proxy = PartitionProxy(target_host, target_port, port=port)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        async def call() -> Any:
            return fn(*args, **kwargs)

        return self._run(call())

    def start(self) -> ProxyThread:
        self._thread.start()
        self._run(self.proxy.start())
        return self

    def stop(self) -> None:
        self._run(self.proxy.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def address(self) -> str:
        return self.proxy.address

    def partition(self) -> None:
        self._call(self.proxy.partition)

    def heal(self, *, reset: bool) -> int:
        return int(self._call(self.proxy.heal, reset=reset))

    @property
    def stranded(self) -> int:
        return int(self._call(lambda: self.proxy.stranded))

    @property
    def accepted(self) -> int:
        return int(self._call(lambda: self.proxy.accepted))
