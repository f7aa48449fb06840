"""Both sides of one batch (event store and Redis read model), read and rendered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from domain import Batch
from infrastructure.bootstrap import Bootstrap
from infrastructure.cli.compare import Difference, compare
from infrastructure.settings import Settings
from projections.slot_view import SUMMARY_FIELDS, ReadModel, read_model_of


def read_model_json(model: ReadModel | None) -> dict[str, Any] | None:
    if model is None:
        return None
    return {
        "summary": {k: model.summary[k] for k in _ordered(model.summary)},
        "available_slots": sorted(model.available_slots),
        "assignments": dict(sorted(model.assignments.items())),
    }


def _ordered(summary: dict[str, str]) -> list[str]:
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

    def render(self, console: Console) -> None:
        table = Table(title=f"batch {self.batch_id}", title_justify="left")
        table.add_column("field")
        table.add_column("event store", justify="right")
        table.add_column("read model", justify="right")
        table.add_column("", justify="center")
        store = self.event_store.summary if self.event_store else {}
        view = self.read_model.summary if self.read_model else {}
        for field in _ordered({**store, **view}) or list(SUMMARY_FIELDS):
            mine, theirs = store.get(field, "—"), view.get(field, "—")
            table.add_row(field, Text(mine), Text(theirs), _mark(mine == theirs))
        for name in ("available_slots", "assignments"):
            mine_n, theirs_n = _count(self.event_store, name), _count(self.read_model, name)
            same = not any(d.key.startswith(name) for d in self.differences)
            table.add_row(name, mine_n, theirs_n, _mark(same and mine_n == theirs_n))
        console.print(table)
        if self.agrees:
            console.print("[green]The read model agrees with the event store.[/green]")
            return
        console.print(
            f"[red]The read model differs from the event store "
            f"({len(self.differences)} differences):[/red]"
        )
        for diff in self.differences:
            console.print(f"  {diff.describe()}", markup=False)


def _mark(same: bool) -> str:
    return "[green]✓[/green]" if same else "[red]✗[/red]"


def _count(model: ReadModel | None, name: str) -> str:
    return "—" if model is None else str(len(getattr(model, name)))
