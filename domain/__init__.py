"""The domain: the Batch aggregate and its rules. Imports only the standard
library and ``eventsourcing.domain``."""

from domain.batch import BATCH_CLOSED, NO_AVAILABLE_SLOT, Batch
from domain.errors import (
    BatchExpired,
    BatchRejection,
    ConflictingFileOutcome,
    InvalidRegistration,
    RegistrationConflict,
    StaleSnapshot,
)

__all__ = [
    "BATCH_CLOSED",
    "NO_AVAILABLE_SLOT",
    "Batch",
    "BatchExpired",
    "BatchRejection",
    "ConflictingFileOutcome",
    "InvalidRegistration",
    "RegistrationConflict",
    "StaleSnapshot",
]
