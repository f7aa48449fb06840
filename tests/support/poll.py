"""Waiting for a condition in tests: the one poll-until helper, sync and async.

Tests wait on conditions, never on fixed sleeps: ``eventually(check)`` polls
``check()`` every ``every`` seconds until it is true, and fails the test with
``what`` after ``timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def eventually(
    check: Callable[[], bool],
    timeout: float = 10.0,
    every: float = 0.05,
    what: str = "condition not reached in time",
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(every)


async def eventually_async(
    check: Callable[[], bool],
    timeout: float = 10.0,
    every: float = 0.05,
    what: str = "condition not reached in time",
) -> None:
    """``eventually`` inside an event loop (the loop keeps running while it waits)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, what
        await asyncio.sleep(every)
