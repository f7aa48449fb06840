"""Where a service process's samples go: py-spy's raw folded stacks, by pipeline stage.

A stack is given to the first stage (in the order below) one of whose frames it holds:
deciding is counted as ``decide`` even where the library builds the event objects, and
the store's own JSON (de)serialization as ``store``. Idle samples are not recorded.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

# (stage, substrings of a frame's "function (file:line)"), first match wins.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("parse", ("application/messages.py", "kafka/inbound.py")),
    ("decide", ("domain/", "_decide (application/service.py", "apply_command")),
    ("envelope", ("projections/envelope.py",)),
    ("project", ("projections/", "infrastructure/redis/", "/redis/")),
    ("store", ("psycopg", "eventsourcing/", "infrastructure/postgres/")),
    ("kafka produce", ("aiokafka/producer", "aiokafka/record")),
    ("kafka consume", ("aiokafka/consumer", "aiokafka/")),
    ("outbox/worker loop", ("infrastructure/processes/",)),
    ("logging/metrics", ("logging/", "prometheus_client", "infrastructure/metrics")),
    ("asyncio", ("asyncio/",)),
)


def stage_of(stack: str) -> str:
    for stage, needles in STAGES:
        if any(n in stack for n in needles):
            return stage
    return "other"


def breakdown(path: Path) -> dict[str, float]:
    """Share of the process's (non-idle) samples per stage."""
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[stage_of(stack)] += int(n)
    total = sum(counts.values()) or 1
    return {stage: n / total for stage, n in counts.most_common()}
