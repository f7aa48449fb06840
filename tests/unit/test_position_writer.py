"""The outbox's background position writes (infrastructure/processes/recording.py):
one at a time, the highest asked, errors raised at the next settle."""

from __future__ import annotations

import asyncio
import threading

import pytest

from infrastructure.processes.recording import PositionWriter


class Store:
    """A blocking write that waits until the test lets it finish."""

    def __init__(self) -> None:
        self.written: list[int] = []
        self.recorded: list[int] = []
        self.gate = threading.Event()
        self.fail: BaseException | None = None

    def write(self, position: int) -> None:
        assert self.gate.wait(5)
        if self.fail is not None:
            raise self.fail
        self.written.append(position)


def test_asks_during_a_write_are_coalesced_into_the_next_one() -> None:
    store = Store()

    async def scenario() -> None:
        writer = PositionWriter(store.write, on_recorded=store.recorded.append)
        writer.ask(10)
        await asyncio.sleep(0.05)  # the first write is under way (held at the gate)
        writer.ask(20)
        writer.ask(30)
        writer.ask(25)  # lower than asked: already covered
        store.gate.set()
        await writer.settle()
        assert writer.recorded == 30

    asyncio.run(scenario())
    assert store.written == [10, 30]
    assert store.recorded == [10, 30]


def test_ask_does_not_wait_for_the_write() -> None:
    store = Store()

    async def scenario() -> None:
        writer = PositionWriter(store.write, on_recorded=store.recorded.append)
        writer.ask(5)
        assert store.written == [] and writer.recorded == 0  # returned before the write
        store.gate.set()
        await writer.settle()

    asyncio.run(scenario())
    assert store.written == [5]


def test_a_failed_write_is_raised_at_settle_and_can_be_asked_again() -> None:
    store = Store()
    store.fail = ConnectionError("store down")
    store.gate.set()

    async def scenario() -> None:
        writer = PositionWriter(store.write, on_recorded=store.recorded.append)
        writer.ask(7)
        await asyncio.sleep(0.05)
        writer.ask(9)  # the failed task is kept for settle, not replaced
        with pytest.raises(ConnectionError):
            await writer.settle()
        store.fail = None
        writer.ask(9)
        await writer.settle()
        assert writer.recorded == 9

    asyncio.run(scenario())
    assert store.written == [9]


def test_reset_goes_on_from_the_position_read_back() -> None:
    store = Store()
    store.gate.set()

    async def scenario() -> None:
        writer = PositionWriter(store.write, on_recorded=store.recorded.append)
        writer.ask(50)
        await writer.settle()
        writer.reset(20)  # the store says 20 (restored from an older backup)
        writer.ask(30)
        await writer.settle()

    asyncio.run(scenario())
    assert store.written == [50, 30]
