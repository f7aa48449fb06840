"""The one way a batchctl command shows its result: a rich table or the ``--json`` document.

A command parses its options, asks a query (``infrastructure/cli/queries/``) for
plain data, and hands that data here: ``render`` for a listing (a table of rows,
a line when there are none, a closing count), ``emit`` for anything else (a
document, and what a person reads instead). Text is taken literally unless it is
``Markup`` (or sits in a column whose cells are), so an id or a letter's detail
is never read as rich markup. Results go to stdout, ``note`` to stderr.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import typer
from rich import box as boxes
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from infrastructure.cli.common import JSON_HELP, err, out, print_json

# The option every command with a machine-readable result takes.
JsonOpt = Annotated[bool, typer.Option("--json", help=JSON_HELP)]


class Markup(str):
    """Text that may hold rich markup (``[red]overdue[/red]``); plain ``str`` is literal."""

    __slots__ = ()


@dataclass(frozen=True)
class Column:
    """One table column: its header and how its cells are laid out."""

    header: str
    justify: Literal["left", "center", "right"] = "left"
    overflow: Literal["fold", "crop", "ellipsis"] = "ellipsis"
    no_wrap: bool = False
    width: int | None = None
    markup: bool = False  # every cell may hold markup (a cell can also be Markup)


Row = Sequence[str]
Part = RenderableType  # a Table, or a line: str (literal) or Markup


def cell(value: str, markup: bool = False) -> RenderableType:
    return value if markup or isinstance(value, Markup) else Text(value)


def table(
    rows: Sequence[Row],
    columns: Sequence[Column],
    *,
    title: str | None = None,
    show_header: bool = True,
    show_edge: bool = True,
    box: boxes.Box | None = boxes.HEAVY_HEAD,
) -> Table:
    """The rows as a table, cells in the order of ``columns``."""
    grid = Table(
        title=title,
        title_justify="left",
        show_header=show_header,
        show_edge=show_edge,
        box=box,
    )
    for c in columns:
        grid.add_column(
            c.header, justify=c.justify, overflow=c.overflow, no_wrap=c.no_wrap, width=c.width
        )
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"a row of {len(row)} cells for {len(columns)} columns")
        grid.add_row(*(cell(v, c.markup) for v, c in zip(row, columns, strict=True)))
    return grid


def verbatim(text: str) -> RenderableType:
    """Text shown exactly as it is: no markup, no ``:emoji:`` codes (a letter's value)."""
    return Text(text)


def show(*parts: Part) -> None:
    """Print each part on stdout: a table, a line (literal unless Markup), ``verbatim``."""
    console = out()
    for part in parts:
        console.print(part, markup=isinstance(part, Markup) or not isinstance(part, str))


def emit(document: Any, json_output: bool, *parts: Part) -> None:
    """The JSON document with --json, otherwise the parts a person reads."""
    if json_output:
        print_json(document)
    else:
        show(*parts)


def render(
    rows: Sequence[Row],
    columns: Sequence[Column],
    *,
    json_output: bool,
    document: Any,
    empty: str,
    footer: str | None = None,
    title: str | None = None,
    box: boxes.Box | None = boxes.HEAVY_HEAD,
) -> None:
    """A listing: the JSON document, or the table and its footer (``empty`` when no rows)."""
    if json_output:
        print_json(document)
    elif not rows:
        show(empty)
    else:
        listing = table(rows, columns, title=title, box=box)
        show(listing, *([footer] if footer is not None else []))


def note(message: str) -> None:
    """A note for the operator on stderr (``note: ...``), never part of the result."""
    err().print(f"note: {message}", markup=False)
