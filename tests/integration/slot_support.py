"""Helpers shared by the Redis view and projector tests (not a test module)."""

from __future__ import annotations

import random
from typing import Any

from application.commands import (
    AnyCommand,
    ExpirePending,
    ProvisionContent,
    RecordValidationFailure,
    RegisterBatch,
    TimeOutBatch,
)
from application.service import BatchService
from domain import Batch
from infrastructure.redis.view import RedisSlotView
from projections.slot_view import ReadModel, read_model_of
from tests.conftest import ManualClock
from tests.strategies import Step, Tick


def run_steps(service: BatchService, clock: ManualClock, steps: list[Step], suffix: str) -> None:
    """Execute a Hypothesis workload, renaming its batches with ``suffix``."""
    for step in steps:
        if isinstance(step, Tick):
            clock.advance(step.seconds)
        else:
            service.execute([step.model_copy(update={"batch_id": step.batch_id + suffix})])


def busy_workload(
    service: BatchService, clock: ManualClock, batches: int, rounds: int, seed: int = 7
) -> list[str]:
    """Many batches through every kind of event; commands go in groups of 40."""
    rng, ids = random.Random(seed), [f"b{i:04d}" for i in range(batches)]
    commands: list[AnyCommand] = []
    for n in range(rounds):
        b, cid = rng.choice(ids), f"c{n}"
        kind = rng.random()
        if kind < 0.15:
            slots = [f"e{j}" for j in range(rng.randint(1, 6))]
            commands.append(RegisterBatch(batch_id=b, correlation_id=cid, essay_ids=slots))
        elif kind < 0.75:
            t = f"t{rng.randint(0, 9)}"
            commands.append(
                ProvisionContent(
                    batch_id=b,
                    correlation_id=cid,
                    text_storage_id=t,
                    file_upload_id=f"f{t}",
                    original_file_name="a.txt",
                )
            )
        elif kind < 0.9:
            commands.append(
                RecordValidationFailure(
                    batch_id=b,
                    correlation_id=cid,
                    file_upload_id=f"g{rng.randint(0, 5)}",
                    original_file_name="bad.txt",
                    error_code="EMPTY",
                )
            )
        else:
            clock.advance(rng.choice([60, 1800, 3600]))
            sweep = TimeOutBatch if rng.random() < 0.5 else ExpirePending
            commands.append(sweep(batch_id=b, correlation_id=cid))
        if len(commands) == 40:
            service.execute(commands)
            commands = []
    service.execute(commands)
    return ids


def expected_models(service: BatchService, batch_ids: list[str]) -> dict[str, ReadModel | None]:
    models: dict[str, ReadModel | None] = {}
    for b in batch_ids:
        batch = service.get_batch(b)
        models[b] = None if batch is None else read_model_of(batch)
    return models


def view_models(view: RedisSlotView, batch_ids: list[str]) -> dict[str, ReadModel | None]:
    return {b: view.read_batch(b) for b in batch_ids}


def everything(view: RedisSlotView) -> dict[str, Any]:
    """Every key under the view's prefix, by value (for 'nothing changed')."""
    found: dict[str, Any] = {}
    client = view.client
    for key in sorted(client.scan_iter(match=f"{view.prefix}*", count=1000)):
        kind = client.type(key)
        if kind == "hash":
            found[key] = client.hgetall(key)
        elif kind == "set":
            found[key] = sorted(client.smembers(key))
        elif kind == "zset":
            found[key] = client.zrange(key, 0, -1, withscores=True)
        else:
            found[key] = client.get(key)
    return found


def keys_like(view: RedisSlotView, pattern: str) -> list[str]:
    """Keys under the view's prefix matching ``pattern``, on every server (SCAN per node)."""
    return sorted(view.client.scan_iter(match=f"{view.prefix}{pattern}", count=1000))


def flush(view: RedisSlotView) -> None:
    """Delete every key under the view's prefix, as FLUSHALL would (every node)."""
    keys = keys_like(view, "*")
    if keys:
        view.client.delete(*keys)  # a cluster client deletes slot by slot


def head(service: BatchService) -> int:
    return service.recorder.max_notification_id() or 0


def batch_of(service: BatchService, batch_id: str) -> Batch:
    batch = service.get_batch(batch_id)
    assert batch is not None
    return batch
