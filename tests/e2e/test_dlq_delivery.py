"""Dead-letter sends that fail: retried, never committed past."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from infrastructure import metrics
from infrastructure.bootstrap import Bootstrap
from infrastructure.kafka.clients import make_producer
from infrastructure.kafka.dlq import DeadLetter, send_dead_letters
from infrastructure.kafka.local_broker import answers, broker_binary, free_port
from infrastructure.processes import worker
from infrastructure.processes.worker import Worker
from infrastructure.settings import Settings
from tests.conftest import make_settings
from tests.e2e.conftest import consume, eventually, running
from tests.support.scenario import Message, content, registration


def letter(n: int, topic: str = "reg-x") -> DeadLetter:
    value = f"not json {n}".encode()
    record = ConsumerRecord(topic, 0, n, -1, 0, b"k", value, None, 1, len(value), ())
    return DeadLetter(record, "INVALID_JSON", f"letter {n}")


class Proxy:
    """A TCP forwarder in front of the broker: closing it makes the broker unreachable."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        self.writers.clear()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target
            )
        except OSError:
            writer.close()
            return
        self.writers += [writer, upstream_writer]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


@pytest.fixture
def proxied_broker() -> Iterator[tuple[int, int]]:
    """A broker that advertises a proxy's address: (broker port, proxy port)."""
    port, proxy = free_port(), free_port()
    process = subprocess.Popen(
        [
            broker_binary(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{proxy}",
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while not answers(f"127.0.0.1:{port}", timeout=0.2):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        yield port, proxy
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.timeout(180)
def test_dead_letters_wait_for_an_unreachable_broker_and_are_delivered_after(
    proxied_broker: tuple[int, int],
) -> None:
    """The broker cannot be reached when the letters are sent: the send waits, then delivers."""
    port, proxy_port = proxied_broker
    settings = make_settings(KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{proxy_port}")
    dlq = f"dlq-{uuid.uuid4().hex[:8]}"
    letters = [letter(n) for n in range(5)]

    async def scenario() -> list[Any]:
        proxy = Proxy(proxy_port, port)
        await proxy.start()
        producer = make_producer(settings, request_timeout_ms=2000, metadata_max_age_ms=1000)
        await producer.start()
        try:
            await producer.send_and_wait(dlq, b"first")  # the topic exists, the client is warm
            failures = metrics.TRANSIENT.labels("dlq")._value.get()
            await proxy.stop()  # the broker is now unreachable
            sending = asyncio.create_task(send_dead_letters(producer, dlq, letters))
            await eventually(
                lambda: (
                    metrics.TRANSIENT.labels("dlq")._value.get() >= failures + 2 or sending.done()
                ),
                timeout=60,
            )
            assert not sending.done()  # still trying: nothing raised, nothing given up
            await proxy.start()  # reachable again
            await asyncio.wait_for(sending, timeout=120)
            records = await consume(settings, dlq, lambda r: len(r) >= 6, timeout=30)
        finally:
            await producer.stop()
            with contextlib.suppress(Exception):
                await proxy.stop()
        return records

    records = asyncio.run(scenario())
    values = [r.value for r in records]
    assert sorted(v for v in values if v != b"first") == sorted(lt.message.value for lt in letters)
    assert all(dict(r.headers)["dlq.reason"] == b"INVALID_JSON" for r in records if r.headers)


def test_a_dead_letter_too_large_to_forward_is_sent_without_its_value(
    e2e_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DLQ producer's request limit below the letter: the worker stays up and moves on."""
    monkeypatch.setattr(worker, "DLQ_MAX_REQUEST_BYTES", 4096)
    service = Bootstrap(e2e_settings).batch_service()
    big = Message("provisioned", "big", b"\xff" + b"x" * 20_000)  # invalid, and too large
    messages = [big, registration("dl-1", ["e1"]), content("dl-1", "t1", "f1")]

    async def scenario() -> list[Any]:
        from tests.e2e.conftest import produce

        await produce(e2e_settings, messages)
        async with running(Worker(e2e_settings, service).run):
            await eventually(
                lambda: (b := service.get_batch("dl-1")) is not None and b.status == "completed",
                timeout=60,
            )
        return await consume(e2e_settings, e2e_settings.topics.dlq, lambda r: len(r) >= 1)

    try:
        dlq = asyncio.run(scenario())
    finally:
        service.close()
    assert len(dlq) == 1
    headers = dict(dlq[0].headers)
    assert dlq[0].value is None
    assert headers["dlq.reason"] == b"INVALID_UTF8"
    assert headers["dlq.value.omitted"] == b"MESSAGE_TOO_LARGE"
    assert headers["dlq.value.size"] == str(len(big.value)).encode()
    assert headers["dlq.source.topic"] == e2e_settings.topics.provisioned.encode()
