"""The CLI's one output helper: the --json document or the table, in the columns' order."""

from __future__ import annotations

import json

import pytest
from rich import box

from infrastructure.cli.output import Column, Markup, emit, render, table

COLUMNS = (Column("id"), Column("count", justify="right"), Column("state", markup=True))
ROWS = [["b-2", "10", "[red]late[/red]"], ["b-1", "3", "open"]]


def lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def test_json_output_is_the_document_alone(capsys: pytest.CaptureFixture[str]) -> None:
    document = {"count": 2, "batches": [{"id": "b-2"}, {"id": "b-1"}]}
    render(ROWS, COLUMNS, json_output=True, document=document, empty="none", footer="2 rows.")
    out, err = capsys.readouterr()
    assert out == json.dumps(document, ensure_ascii=False) + "\n"
    assert list(json.loads(out)) == ["count", "batches"]  # keys in the document's order
    assert err == ""


def test_the_table_has_its_title_columns_in_order_rows_and_footer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    render(
        ROWS,
        COLUMNS,
        json_output=False,
        document={},
        empty="none",
        footer="2 rows.",
        title="the batches",
    )
    shown = lines(capsys.readouterr().out)
    assert shown[0] == "the batches"
    header = next(line for line in shown if "id" in line and "count" in line)
    assert header.index("id") < header.index("count") < header.index("state")
    body = [line for line in shown if "b-" in line]
    assert [line.split()[1] for line in body] == ["b-2", "b-1"]  # the rows' order
    assert "late" in body[0] and "[red]" not in body[0]  # a markup column is rendered
    assert body[0].index("10") < body[0].index("late")
    assert shown[-1] == "2 rows."


def test_no_rows_prints_the_empty_line_only(capsys: pytest.CaptureFixture[str]) -> None:
    render([], COLUMNS, json_output=False, document={}, empty="No batches match.", footer="x")
    assert capsys.readouterr().out == "No batches match.\n"


def test_text_is_literal_unless_it_is_markup(capsys: pytest.CaptureFixture[str]) -> None:
    grid = table([["[b]id[/b]", "1", "x"]], COLUMNS, box=None)
    emit({"ignored": True}, False, grid, "[red]literal[/red]", Markup("[red]markup[/red]"))
    shown = lines(capsys.readouterr().out)
    assert "[b]id[/b]" in shown[1]  # a literal column keeps its brackets
    assert shown[-2:] == ["[red]literal[/red]", "markup"]


def test_emit_prints_only_the_document_with_json(capsys: pytest.CaptureFixture[str]) -> None:
    emit({"a": 1, "b": None}, True, "not shown")
    assert capsys.readouterr().out == '{"a": 1, "b": null}\n'


def test_columns_keep_their_layout() -> None:
    grid = table(
        ROWS,
        (Column("id", overflow="fold", no_wrap=True, width=9), *COLUMNS[1:]),
        title="t",
        show_header=False,
        box=box.SIMPLE_HEAD,
    )
    assert [c.header for c in grid.columns] == ["id", "count", "state"]
    first, second = grid.columns[0], grid.columns[1]
    assert (first.overflow, first.no_wrap, first.width) == ("fold", True, 9)
    assert second.justify == "right"
    assert grid.title == "t" and grid.title_justify == "left" and not grid.show_header
    assert grid.box is box.SIMPLE_HEAD


def test_a_row_that_does_not_fit_the_columns_is_a_bug() -> None:
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        table([["a", "b"]], COLUMNS)
