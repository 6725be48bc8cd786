"""The sortable anywidget table: sort order, traits synced to the browser, text-only rendering."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import traitlets

from iua_widgets.widgets.table import SortableTable, column, json_value, natural_key

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


def test_text_sorts_naturally():
    table = SortableTable(COLUMNS, row_key="name", sort_column="name")
    names = ["layer10", "layer2", "layer1", "layer1.10", "layer1.9", "layer01", "Layer3", "layer"]
    table.set_rows([{"name": n, "value": 0.0} for n in names])
    # layer01 and layer1 have equal runs, so the whole text decides ("0" < "1").
    want = ["Layer3", "layer", "layer01", "layer1", "layer1.9", "layer1.10", "layer2", "layer10"]
    assert table.row_ids() == want
    table.sort_ascending = False
    assert table.row_ids() == want[::-1]


def test_natural_key_digit_runs_by_value():
    # Digit runs longer than any float still compare exactly.
    assert natural_key("x" + "9" * 30) < natural_key("x1" + "0" * 30)
    assert natural_key("a2") < natural_key("a10")
    assert natural_key("a") < natural_key("a0")
    # A digit run against other text compares by first character, like plain text.
    assert natural_key("!a") < natural_key("1a") < natural_key("ba")
    assert natural_key("a5") < natural_key("a_")
    assert natural_key("") < natural_key("0")


def sample_names(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    alphabet = list("ab_.-09 1") + ["Z", "é", "\U0001f600", "\uff21", "007"]
    return ["".join(rng.choice(alphabet, size=rng.integers(0, 7))) for _ in range(count)]


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js to run table.js")
def test_javascript_sort_matches_python(tmp_path):
    names = sample_names(400, seed=3) + ["layer10", "layer2", "layer1", "layer01"]
    # Node imports ES modules by the .mjs suffix without a package.json.
    module = tmp_path / "table.mjs"
    module.write_text(str(SortableTable._esm))
    script = (
        f"import {{ compareNatural }} from {json.dumps(module.as_uri())};\n"
        "const names = JSON.parse(process.argv[1]);\n"
        "console.log(JSON.stringify(names.slice().sort(compareNatural)));\n"
    )
    output = subprocess.run(
        ["node", "--input-type=module", "-e", script, json.dumps(names)],
        capture_output=True, text=True, check=True,
    ).stdout
    assert json.loads(output) == sorted(names, key=natural_key)


def test_unknown_selection_reverted(monkeypatch):
    recorder = install(monkeypatch)
    table = SortableTable(COLUMNS, row_key="name")
    table.set_rows(ROWS)
    table.selected = "c"
    table.selected = "ghost"
    assert table.selected == "c"
    recorder.clear()
    browser_update(table, selected="ghost")
    assert table.selected == "c"
    sent = [m.data["state"] for m in recorder.updates(table.model_id)]
    assert sent == [{"selected": "c"}]
    table.selected = None
    assert table.selected is None


def test_selection_cleared_when_row_goes():
    table = SortableTable(COLUMNS, row_key="name")
    table.set_rows(ROWS)
    table.selected = "b"
    table.set_rows(ROWS[1:])
    assert table.selected is None


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js to run table.js")
def test_javascript_formats_thousands(tmp_path):
    module = tmp_path / "table.mjs"
    module.write_text(str(SortableTable._esm))
    cases = [
        (1_000_000, column("units", "units", "int")),
        (999, column("units", "units", "int")),
        (1797, column("inputs", "inputs", "int")),
        (12345.678, column("mean", "mean", "float", digits=2)),
        (0.5, column("pct", "pct", "float", digits=2)),
        (None, column("pct", "pct", "float", digits=2)),
        (True, column("dead", "dead", "bool")),
        ("layer1000", column("layer", "layer", "text")),
    ]
    script = (
        f"import {{ formatValue }} from {json.dumps(module.as_uri())};\n"
        "const cases = JSON.parse(process.argv[1]);\n"
        "console.log(JSON.stringify(cases.map(([value, spec]) => formatValue(value, spec))));\n"
    )
    output = subprocess.run(
        ["node", "--input-type=module", "-e", script, json.dumps(cases)],
        capture_output=True, text=True, check=True,
    ).stdout
    assert json.loads(output) == [
        "1,000,000", "999", "1,797", "12,345.68", "0.50", "", "yes", "layer1000",
    ]
