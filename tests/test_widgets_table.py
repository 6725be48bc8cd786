"""The sortable anywidget table: sort order, traits synced to the browser, text-only rendering."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import traitlets

from iua_widgets.widgets.table import SortableTable, column, json_value

from .widget_recorder import browser_update, install

COLUMNS = [column("name", "name", "text"), column("value", "value", "float", digits=2)]
ROWS = [
    {"name": "b", "value": 2.0},
    {"name": "a", "value": math.nan},
    {"name": "c", "value": 2.0},
    {"name": "d", "value": -1.0},
]


def test_sort_numbers_missing_last():
    table = SortableTable(COLUMNS, row_key="name", sort_column="value", sort_ascending=True)
    table.set_rows(ROWS)
    assert table.row_ids() == ["d", "b", "c", "a"]
    table.sort_ascending = False
    # Ties keep their order in both directions; missing values stay last.
    assert table.row_ids() == ["b", "c", "d", "a"]


def test_sort_text_by_code_point():
    table = SortableTable(COLUMNS, row_key="name", sort_column="name")
    table.set_rows([{"name": n, "value": 0.0} for n in ["b", "B", "a", "<img>"]])
    assert table.row_ids() == ["<img>", "B", "a", "b"]


def test_sort_by_hidden_field():
    columns = [column("unit", "unit", "text", sort_by="order"), column("n", "n", "int")]
    table = SortableTable(columns, row_key="unit", sort_column="unit")
    table.set_rows([{"unit": "(10,)", "order": 10, "n": 1}, {"unit": "(2,)", "order": 2, "n": 5}])
    assert table.row_ids() == ["(2,)", "(10,)"]


def test_unknown_sort_column_rejected():
    table = SortableTable(COLUMNS, row_key="name")
    with pytest.raises(traitlets.TraitError, match="Unknown sort column 'nope'"):
        table.sort_column = "nope"
    with pytest.raises(ValueError, match="kind 'date'"):
        column("x", "x", "date")


def test_rows_are_json_values():
    table = SortableTable(COLUMNS, row_key="name")
    table.set_rows([{"name": "x", "value": np.float64(np.inf)}, {"name": "y", "value": np.int64(3)}])
    assert table.rows[0]["value"] is None
    assert type(table.rows[1]["value"]) is int
    assert json_value(np.float32(0.5)) == 0.5


def test_browser_sort_and_selection_reach_python(monkeypatch):
    recorder = install(monkeypatch)
    table = SortableTable(COLUMNS, row_key="name")
    table.set_rows(ROWS)
    recorder.clear()
    # What the browser sends on a header click, then on a row click.
    browser_update(table, sort_column="value", sort_ascending=False)
    assert table.row_ids() == ["b", "c", "d", "a"]
    sent = recorder.updates(table.model_id)
    assert any("rows" in m.data["state"] for m in sent)
    browser_update(table, selected="c")
    assert table.selected == "c"


def test_markup_in_names_is_plain_text(monkeypatch):
    recorder = install(monkeypatch)
    name = "<img src=x onerror=alert(1)>"
    table = SortableTable(COLUMNS, row_key="name")
    table.set_rows([{"name": name, "value": 1.0}])
    sent_rows = [m.data["state"]["rows"] for m in recorder.messages if "rows" in m.data.get("state", {})]
    assert sent_rows[-1][0]["name"] == name
    # The front end writes data with textContent and setAttribute only.
    script = Path(__file__).parents[1] / "iua_widgets" / "widgets" / "table.js"
    text = script.read_text()
    assert str(SortableTable._esm) == text
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
    assert "innerHTML" not in code
    assert "insertAdjacentHTML" not in code
    assert "cell.textContent = formatValue" in code
    assert 'line.setAttribute("data-row", rowId)' in code
