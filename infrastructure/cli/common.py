"""What every batchctl command shares: settings, the service, output, errors, progress.

Commands stay thin (parse, call, render); this module holds the rendering
conventions: tables and messages go to stdout, progress bars and errors to
stderr, ``--json`` output is one stable document (or one object per line).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from application.service import BatchService
from infrastructure.bootstrap import Bootstrap
from infrastructure.settings import Settings, load_settings

# Wide enough for the tables when stdout is a pipe or a file (rich would use 80).
_PIPE_WIDTH = 200

# The help text of every option that switches to machine-readable output.
JSON_HELP = "Print JSON instead of a table (stable keys; see docs/cli.md)."


class CliError(Exception):
    """A one-line error for the operator; the process exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fail(message: str, exit_code: int = 2) -> NoReturn:
    raise CliError(message, exit_code)


def out() -> Console:
    """The console for results (stdout)."""
    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(highlight=False, width=_PIPE_WIDTH, soft_wrap=True)


def err() -> Console:
    """The console for progress and diagnostics (stderr)."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


def settings() -> Settings:
    """The validated settings (a SettingsError names the variable to fix)."""
    return load_settings()


@contextmanager
def container(s: Settings | None = None) -> Iterator[Bootstrap]:
    """The wiring container; what it built is closed when the command ends.

    It creates nothing (only ``batchctl init`` and the long-running processes do): a
    missing database, schema or table is a one-line error naming the setting.
    """
    with Bootstrap(s or settings(), create=False) as built:
        yield built


@contextmanager
def batch_service(s: Settings | None = None) -> Iterator[BatchService]:
    """The event store's application, closed when the command ends."""
    with container(s) as built:
        yield built.service


def print_json(document: Any) -> None:
    """One JSON document on stdout (keys in the documented order)."""
    sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")


def print_json_line(document: Any) -> None:
    sys.stdout.write(json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n")


def progress_wanted(json_output: bool = False) -> bool:
    """Progress bars only for a person watching stderr, never with --json."""
    return not json_output and sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


ProgressFn = Callable[[int, int], None]


@contextmanager
def progress_bar(description: str, enabled: bool) -> Iterator[ProgressFn]:
    """A ``(done, total)`` callback that drives a rich bar on stderr (or does nothing)."""
    if not enabled:
        yield lambda done, total: None
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err(),
        transient=True,
    )
    task = bar.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total or None)

    with bar:
        yield update
