"""The IUA dashboard in a real browser: clicks, typing and drags, checked on the DOM.

Each test runs in JupyterLab and in Notebook 7. The expected table numbers
come from brute-force numpy on the same synthetic responses the notebook
streams (``dashboard_notebooks.SYNTHETIC_SOURCE``).
"""

from __future__ import annotations

import importlib.util
import re
import time

import numpy as np
import pytest

from .dashboard_notebooks import (
    FAILING_AFTER,
    LINKED_CONTROLS_NOTEBOOK,
    SLOW_BATCH_DELAY,
    STREAM_BATCH_SIZE,
    STREAM_CONTROLS_NOTEBOOK,
    expected_layer_row,
    synthetic_constants,
    synthetic_layers,
)
from .notebook_ui import (
    RENDER_TIMEOUT_MS,
    cell_errors,
    open_notebook,
    run_all_cells,
    wait_for_stable,
    wait_for_stable_text,
    wait_until,
    write_notebook,
)

sync_api = pytest.importorskip(
    "playwright.sync_api", reason='playwright-python is missing: pip install "iua-widgets[test]"'
)
expect = sync_api.expect

pytestmark = pytest.mark.browser

# Milliseconds a DOM expectation waits for a kernel round trip.
ROUND_TRIP_MS = 30_000

# The notebook adds the digits CNN's ReLU layers when these import.
DIGITS_AVAILABLE = all(
    importlib.util.find_spec(name) is not None
    for name in ("torch", "sklearn", "iua_widgets.models.digits", "iua_widgets.torch")
)
DIGITS_LAYERS = ("relu1", "relu2", "relu3")

# Reads a SortableTable: one entry per body row, in display order.
READ_TABLE = """(table) => Array.from(table.querySelectorAll("tbody tr")).map((row) => ({
    row: row.getAttribute("data-row"),
    classes: Array.from(row.classList),
    cells: Object.fromEntries(Array.from(row.querySelectorAll("td")).map(
        (cell) => [cell.getAttribute("data-column"), cell.textContent])),
}))"""


def read_table(table) -> list[dict]:
    """Return the rows of a dashboard table as shown: ``row`` id, ``classes`` and ``cells`` text."""
    return table.evaluate(READ_TABLE)


def stable_table(table) -> list[dict]:
    """Return the rows of ``table`` once they have not changed for 1.5 s."""
    return wait_for_stable(lambda: read_table(table), quiet=1.5)


def by_row(rows: list[dict]) -> dict[str, dict]:
    """Index table rows by their ``data-row`` id."""
    return {row["row"]: row for row in rows}


def seen_inputs(progress_text: str) -> int:
    """Return N from a progress label such as ``"96 / 360 inputs · 31 inputs/s · paused"``."""
    match = re.match(r"([\d,]+) (/ [\d,]+ )?inputs", progress_text)
    assert match, f"unexpected progress label {progress_text!r}"
    return int(match.group(1).replace(",", ""))


def number(text: str) -> float:
    """Return the number a table cell shows, thousands separators (``1,024``) removed."""
    return float(text.replace(",", ""))


def assert_rows_match_numpy(rows: list[dict], layers: dict, atol: float) -> None:
    """Check each synthetic layer's row against brute-force numpy at ``atol``."""
    rows_by_layer = by_row(rows)
    for name, values in layers.items():
        assert name in rows_by_layer, f"layer {name!r} missing from the table; rows: {list(rows_by_layer)}"
        cells = rows_by_layer[name]["cells"]
        expected = expected_layer_row(values, atol)
        assert cells["layer"] == name
        assert number(cells["units"]) == expected["units"], name
        assert number(cells["inputs"]) == expected["inputs"], name
        assert number(cells["dead_units"]) == expected["dead_units"], (name, atol)
        # Two decimals are shown; JavaScript's toLocaleString and Python's round may
        # break an exact tie differently, hence half a unit of the last digit.
        for key in ("mean_inactive", "std_inactive", "mean_inactive_pct", "dead_pct"):
            assert number(cells[key]) == pytest.approx(expected[key], abs=0.005 + 1e-9), (
                f"{name!r} {key} at atol={atol:g}"
            )


def column_values(rows: list[dict], key: str) -> list[float]:
    """Return the numbers of one column, in display order."""
    return [number(row["cells"][key]) for row in rows]


def test_dashboard_links_controls(server, notebook_dir, page):
    constants = synthetic_constants()
    inputs = constants["INPUTS"]
    xss_layer = constants["XSS_LAYER"]
    layers = synthetic_layers()

    path = write_notebook(notebook_dir / "dashboard.ipynb", LINKED_CONTROLS_NOTEBOOK)
    open_notebook(page, server, path)
    run_all_cells(page)

    dashboard = page.locator(".iua-dashboard")
    dashboard.wait_for(timeout=RENDER_TIMEOUT_MS)
    table = dashboard.locator(".iua-layer-table")
    heatmap_title = dashboard.locator(".iua-heatmap text.mainheading")
    select = dashboard.locator(".iua-layer-select select")

    # The stream ends: the label shows N / N and the bar is full.
    label = dashboard.locator(".iua-progress-label")
    expect(label).to_contain_text(f"{inputs} / {inputs} inputs", timeout=RENDER_TIMEOUT_MS)
    progress_text = wait_for_stable_text(label)
    assert progress_text.startswith(f"{inputs} / {inputs} inputs"), cell_errors(page)
    assert "finished" in progress_text
    bar_width = dashboard.locator(".iua-progress .progress-bar").evaluate("(bar) => bar.style.width")
    assert bar_width == "100%"
    assert dashboard.locator(".iua-errors").inner_text().strip() == ""

    # The table at the starting atol equals brute force; the model's layers are there too.
    rows = stable_table(table)
    assert_rows_match_numpy(rows, layers, atol=1e-8)
    if DIGITS_AVAILABLE:
        assert set(DIGITS_LAYERS) <= set(by_row(rows)), cell_errors(page)
    rows_by_layer = by_row(rows)
    assert "flagged" in rows_by_layer["sparse"]["classes"]
    assert "flagged" not in rows_by_layer["dense"]["classes"]
    expect(dashboard.locator(".iua-alert-note")).to_have_text(
        "red: ≥ 10 % dead units or NaN/inf values"
    )

    # The layer named like an HTML tag shows literally and runs nothing.
    assert rows_by_layer[xss_layer]["cells"]["layer"] == xss_layer
    assert page.locator("img[src='x']").count() == 0

    # The bqplot HeatMap is painted as an SVG image.
    assert dashboard.locator(".iua-heatmap.bqplot.figure svg image").count() >= 1

    # Typing an off-grid atol snaps it to the grid, visibly, and updates the table.
    atol_text = dashboard.locator(".iua-atol-text input")
    atol_text.fill("0.03")
    atol_text.press("Enter")
    readout = dashboard.locator(".iua-atol .widget-readout")
    expect(readout).to_have_text("0.02", timeout=ROUND_TRIP_MS)
    expect(dashboard.locator(".iua-atol-note")).to_contain_text("snapped to 0.02", timeout=ROUND_TRIP_MS)
    expect(atol_text).to_have_value("0.02", timeout=ROUND_TRIP_MS)
    typed_rows = stable_table(table)
    assert_rows_match_numpy(typed_rows, layers, atol=0.02)
    assert column_values(typed_rows, "mean_inactive_pct") != column_values(rows, "mean_inactive_pct")

    # Dragging the slider handle to the left lowers atol; the table follows.
    handle = dashboard.locator(".iua-atol .noUi-handle")
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 80, y, steps=8)
    page.mouse.up()
    dragged_text = wait_for_stable_text(readout, quiet=1.5)
    dragged_atol = float(dragged_text)
    assert dragged_atol < 0.02
    expect(atol_text).to_have_value(dragged_text, timeout=ROUND_TRIP_MS)
    assert_rows_match_numpy(stable_table(table), layers, atol=dragged_atol)

    # Clicking a numeric header sorts largest first; a second click reverses the order.
    order_before = [row["row"] for row in read_table(table)]
    header = table.locator('th[data-column="mean_inactive_pct"]')
    header.click()
    expect(header).to_have_class(re.compile(r"\bsorted-desc\b"), timeout=ROUND_TRIP_MS)
    descending = stable_table(table)
    values = column_values(descending, "mean_inactive_pct")
    assert values == sorted(values, reverse=True)
    assert [row["row"] for row in descending] != order_before
    assert sorted(row["row"] for row in descending) == sorted(order_before)
    header.click()
    expect(header).to_have_class(re.compile(r"\bsorted-asc\b"), timeout=ROUND_TRIP_MS)
    values = column_values(stable_table(table), "mean_inactive_pct")
    assert values == sorted(values)

    # Clicking a row selects its layer: selector, heatmap title and unit drill-down follow.
    table.locator('tr[data-row="sparse"]').click()
    expect(table.locator('tr[data-row="sparse"]')).to_have_class(
        re.compile(r"\bselected\b"), timeout=ROUND_TRIP_MS
    )
    expect(select).to_have_value("sparse", timeout=ROUND_TRIP_MS)
    expect(heatmap_title).to_contain_text("sparse", timeout=ROUND_TRIP_MS)
    dead_units = expected_layer_row(layers["sparse"], dragged_atol)["dead_units"]
    histogram_title = dashboard.locator(".iua-unit-histogram text.mainheading")
    expect(histogram_title).to_contain_text(
        f"sparse: units by inactive proportion ({dead_units} dead)",
        timeout=ROUND_TRIP_MS,
    )
    unit_rows = stable_table(dashboard.locator(".iua-unit-table"))
    assert sum(row["cells"]["dead"] == "yes" for row in unit_rows) == dead_units

    # Hovering a heatmap cell names its unit and inactive proportion. The 64
    # units of "sparse" are drawn in rows of 8, unit 0 top left, 63 bottom right.
    image = dashboard.locator(".iua-heatmap image.heatmap")
    hover = dashboard.locator(".iua-heatmap-hover")
    box = image.bounding_box()
    inactive = np.isclose(layers["sparse"], 0.0, rtol=1e-5, atol=dragged_atol).mean(axis=0)
    for unit, (row, col) in ((0, (0, 0)), (63, (7, 7))):
        page.mouse.move(
            box["x"] + (col + 0.5) * box["width"] / 8, box["y"] + (row + 0.5) * box["height"] / 8
        )
        expect(hover).to_have_text(
            f"unit ({unit},): inactive proportion {inactive[unit]:.4g}", timeout=ROUND_TRIP_MS
        )

    # 127 units in rows of 12 leave 5 padding cells: a second, grey HeatMap image covers
    # exactly them, and hovering one names it as padding.
    select.select_option(value="padded")
    expect(heatmap_title).to_have_text(
        "padded · 127 units · rows of 12, 1 unit per cell, 5 padding cells in grey",
        timeout=ROUND_TRIP_MS,
    )
    expect(image).to_have_count(2, timeout=ROUND_TRIP_MS)
    boxes = sorted(
        (image.nth(index).bounding_box() for index in range(2)),
        key=lambda box: box["width"] * box["height"],
    )
    padding_box, grid_box = boxes
    cell_width, cell_height = grid_box["width"] / 12, grid_box["height"] / 11
    assert padding_box["x"] == pytest.approx(grid_box["x"] + 7 * cell_width, abs=2)
    assert padding_box["width"] == pytest.approx(5 * cell_width, abs=2)
    assert padding_box["y"] == pytest.approx(grid_box["y"] + 10 * cell_height, abs=2)
    assert padding_box["height"] == pytest.approx(cell_height, abs=2)
    padded_inactive = np.isclose(layers["padded"], 0.0, rtol=1e-5, atol=dragged_atol).mean(axis=0)
    for col, text in (
        (6, f"unit (126,): inactive proportion {padded_inactive[126]:.4g}"),
        (7, "padding cell (no unit)"),
        (11, "padding cell (no unit)"),
    ):
        page.mouse.move(
            grid_box["x"] + (col + 0.5) * cell_width, grid_box["y"] + 10.5 * cell_height
        )
        expect(hover).to_have_text(text, timeout=ROUND_TRIP_MS)

    # Choosing the HTML-like layer in the selector selects its row and titles the heatmap literally.
    select.select_option(value=xss_layer)
    expect(table.locator("tr.selected")).to_have_attribute("data-row", xss_layer, timeout=ROUND_TRIP_MS)
    expect(heatmap_title).to_contain_text(xss_layer, timeout=ROUND_TRIP_MS)
    assert page.locator("img[src='x']").count() == 0
    assert page.dialogs == []


def test_dashboard_stream_buttons(server, notebook_dir, page):
    constants = synthetic_constants()
    inputs = constants["INPUTS"]
    failing_inputs = FAILING_AFTER * STREAM_BATCH_SIZE

    path = write_notebook(notebook_dir / "stream.ipynb", STREAM_CONTROLS_NOTEBOOK)
    open_notebook(page, server, path)
    run_all_cells(page)

    controlled = page.locator(".probe-controlled")
    controlled.wait_for(timeout=RENDER_TIMEOUT_MS)
    label = controlled.locator(".iua-progress-label")
    pause = controlled.locator("button.iua-pause")
    resume = controlled.locator("button.iua-resume")
    cancel = controlled.locator("button.iua-cancel")

    expect(pause).to_be_enabled(timeout=RENDER_TIMEOUT_MS)
    wait_until(lambda: seen_inputs(label.inner_text()) > 0, "no batch arrived")

    # Pause: the count stops.
    pause.click()
    expect(label).to_contain_text("paused", timeout=ROUND_TRIP_MS)
    expect(resume).to_be_enabled()
    expect(pause).to_be_disabled()
    paused_text = wait_for_stable_text(label)
    paused_at = seen_inputs(paused_text)
    assert 0 < paused_at < inputs, paused_text
    time.sleep(4 * SLOW_BATCH_DELAY)  # a running stream would add about four batches
    assert label.inner_text() == paused_text

    # Resume: the count grows again.
    resume.click()
    expect(label).not_to_contain_text("paused", timeout=ROUND_TRIP_MS)
    wait_until(lambda: seen_inputs(label.inner_text()) > paused_at, "the count did not grow after Resume")

    # Cancel: the stream ends early and the buttons are disabled.
    cancel.click()
    expect(label).to_contain_text("cancelled", timeout=ROUND_TRIP_MS)
    cancelled_at = seen_inputs(wait_for_stable_text(label))
    assert paused_at < cancelled_at < inputs
    for button in (pause, resume, cancel):
        expect(button).to_be_disabled()
    assert controlled.locator(".iua-errors").inner_text().strip() == ""

    # A producer that raises: its error shows in the error area, the batches before it stay.
    failing = page.locator(".probe-failing")
    expect(failing.locator(".iua-errors")).to_contain_text(
        f"RuntimeError: synthetic producer failure after {FAILING_AFTER} batches", timeout=ROUND_TRIP_MS
    )
    failing_label = failing.locator(".iua-progress-label")
    expect(failing_label).to_contain_text("failed", timeout=ROUND_TRIP_MS)
    assert seen_inputs(failing_label.inner_text()) == failing_inputs
    assert page.dialogs == []
