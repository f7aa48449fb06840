"""Named domain exceptions. A rejected command records nothing."""

from __future__ import annotations


class BatchRejection(Exception):
    """Base class: the aggregate refused a command. `reason` is a stable code."""

    reason: str = "REJECTED"

    def __init__(self, batch_id: str, detail: str) -> None:
        super().__init__(f"batch {batch_id!r}: {detail}")
        self.batch_id = batch_id
        self.detail = detail


class InvalidRegistration(BatchRejection):
    """The registration itself is malformed (no slots, duplicate slots)."""

    reason = "INVALID_REGISTRATION"


class RegistrationConflict(BatchRejection):
    """The batch is already registered with different slots."""

    reason = "REGISTRATION_CONFLICT"


class BatchExpired(BatchRejection):
    """The batch's pending content expired before any registration arrived."""

    reason = "BATCH_EXPIRED"


class ConflictingFileOutcome(BatchRejection):
    """The file already has another outcome in this batch (content or failure)."""

    reason = "CONFLICTING_FILE_OUTCOME"


class StaleSnapshot(Exception):
    """A snapshot older than the aggregate's state format: load by full replay instead."""

    def __init__(self, batch_id: str, detail: str) -> None:
        super().__init__(f"batch {batch_id!r}: {detail}")
        self.batch_id = batch_id
