"""batchctl worker / projector / outbox / run: the long-running processes."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the long-running service commands to the batchctl app."""
