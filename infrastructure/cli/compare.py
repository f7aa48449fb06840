"""Key-by-key comparison of what the event store implies with what Redis holds.

A difference names the batch, the key (``summary.<field>``,
``available_slots:<essay_id>``, ``assignments:<essay_id>`` or ``batch``) and
both values; ``None`` means absent on that side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from projections.slot_view import SUMMARY_FIELDS, ReadModel


@dataclass(frozen=True)
class Difference:
    batch_id: str
    key: str
    event_store: str | None
    read_model: str | None

    def as_json(self) -> dict[str, str | None]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"batch {self.batch_id}: {self.key}: event store {_show(self.event_store)}, "
            f"read model {_show(self.read_model)}"
        )


def _show(value: str | None) -> str:
    return "absent" if value is None else repr(value)


def compare(batch_id: str, store: ReadModel | None, view: ReadModel | None) -> list[Difference]:
    """Every key on which the two sides disagree (empty when they agree)."""
    if store is None and view is None:
        return []
    if store is None or view is None:
        return [
            Difference(
                batch_id,
                "batch",
                "present" if store is not None else None,
                "present" if view is not None else None,
            )
        ]
    diffs: list[Difference] = []
    fields = list(SUMMARY_FIELDS) + sorted(
        (set(store.summary) | set(view.summary)) - set(SUMMARY_FIELDS)
    )
    for field in fields:
        mine, theirs = store.summary.get(field), view.summary.get(field)
        if mine != theirs:
            diffs.append(Difference(batch_id, f"summary.{field}", mine, theirs))
    for essay_id in sorted(store.available_slots ^ view.available_slots):
        diffs.append(
            Difference(
                batch_id,
                f"available_slots:{essay_id}",
                "member" if essay_id in store.available_slots else None,
                "member" if essay_id in view.available_slots else None,
            )
        )
    for essay_id in sorted(set(store.assignments) | set(view.assignments)):
        mine, theirs = store.assignments.get(essay_id), view.assignments.get(essay_id)
        if mine != theirs:
            diffs.append(Difference(batch_id, f"assignments:{essay_id}", mine, theirs))
    return diffs
