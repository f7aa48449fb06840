"""Running a process's parts together: the first part that fails stops the others."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any


async def until_one_fails(tasks: Sequence[asyncio.Task[Any]], stop: asyncio.Event) -> None:
    """Wait until every task has ended; when one raises, set ``stop`` (the others end
    what they hold), wait for them all, and raise its error."""
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            error = task.exception()
            if error is not None:
                raise error
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
