"""One batch on both sides: what its events imply, what the Redis read model holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from domain import Batch
from infrastructure.bootstrap import Bootstrap
from infrastructure.cli.compare import Difference, compare
from infrastructure.settings import Settings
from projections.slot_view import SUMMARY_FIELDS, ReadModel, read_model_of


def read_model_json(model: ReadModel | None) -> dict[str, Any] | None:
    if model is None:
        return None
    return {
        "summary": {k: model.summary[k] for k in ordered(model.summary)},
        "available_slots": sorted(model.available_slots),
        "assignments": dict(sorted(model.assignments.items())),
    }


def ordered(summary: dict[str, str]) -> list[str]:
    """The summary's fields: the known ones in their order, then any others sorted."""
    known = [k for k in SUMMARY_FIELDS if k in summary]
    return known + sorted(set(summary) - set(SUMMARY_FIELDS))


@dataclass(frozen=True)
class BothSides:
    """A batch as the event store implies it beside what the read model holds."""

    batch_id: str
    event_store: ReadModel | None
    read_model: ReadModel | None
    differences: list[Difference]

    @classmethod
    def of(cls, settings: Settings, batch_id: str, batch: Batch | None) -> BothSides:
        store = read_model_of(batch) if batch is not None else None
        with Bootstrap(settings, create=False) as container:
            current = container.view.read_batch(batch_id)
        return cls(batch_id, store, current, compare(batch_id, store, current))

    @property
    def agrees(self) -> bool:
        return not self.differences

    def as_json(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "event_store": read_model_json(self.event_store),
            "read_model": read_model_json(self.read_model),
            "agrees": self.agrees,
            "differences": [d.as_json() for d in self.differences],
        }
