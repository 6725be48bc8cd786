"""The training timeline in a real browser: live lines, atol slider, layer highlight.

Each test runs in JupyterLab and in Notebook 7. The expected numbers come
from the tracker in the same kernel, printed by the notebook.
"""

from __future__ import annotations

import json

import pytest

from .notebook_ui import (
    RENDER_TIMEOUT_MS,
    cell_errors,
    open_notebook,
    run_all_cells,
    wait_for_stable_text,
    write_notebook,
)

sync_api = pytest.importorskip(
    "playwright.sync_api", reason='playwright-python is missing: pip install "iua-widgets[test]"'
)
pytest.importorskip("torch")
pytest.importorskip("sklearn")
expect = sync_api.expect

pytestmark = pytest.mark.browser

ROUND_TRIP_MS = 30_000

TRAIN_CELLS = [
    """\
from iua_widgets.models.mlp import HIGH_LR, build_digits_mlp, digits_tracker, train_digits_mlp
from iua_widgets.widgets.training import TrainingDashboard
model = build_digits_mlp(seed=0)
tracker = digits_tracker(model, every=15)
view = TrainingDashboard(tracker, layer="act2")
view""",
    """\
import json
train_digits_mlp(model, lr=HIGH_LR, epochs=3, tracker=tracker)
last = tracker.timeline(atol=0.1).groupby("layer").tail(1)
print("EXPECTED", json.dumps({"snapshots": len(tracker.snapshots),
      "dead_at_0.1": dict(zip(last["layer"], last["dead %"].round(2)))}))""",
]

# Data line paths of a bqplot figure (legend entries left out), with their opacity.
READ_LINES = """(figure) => Array.from(figure.querySelectorAll("path.line"))
    .filter((path) => path.closest(".g_legend") === null)
    .map((path) => ({opacity: getComputedStyle(path).opacity, d: path.getAttribute("d") || ""}))"""


def expected_output(page) -> dict:
    text = page.locator(".jp-OutputArea-output", has_text="EXPECTED").first.inner_text()
    return json.loads(text.split("EXPECTED", 1)[1])


def test_timeline_live_and_linked(server, page, notebook_dir):
    path = write_notebook(notebook_dir / "timeline.ipynb", TRAIN_CELLS)
    open_notebook(page, server, path)
    run_all_cells(page)

    timeline = page.locator(".iua-timeline").first
    timeline.wait_for(timeout=RENDER_TIMEOUT_MS)
    page.locator(".jp-OutputArea-output", has_text="EXPECTED").first.wait_for(
        timeout=RENDER_TIMEOUT_MS
    )
    expected = expected_output(page)
    status = timeline.locator(".iua-timeline-status")
    expect(status).to_contain_text(f"{expected['snapshots']} snapshots", timeout=ROUND_TRIP_MS)

    # The training snapshot has no stream: a plain count, no progress bar or buttons.
    dashboard_progress = page.locator(".iua-dashboard .iua-progress-label").first
    expect(dashboard_progress).to_have_text("360 inputs (snapshot)", timeout=ROUND_TRIP_MS)
    expect(page.locator(".iua-dashboard button.iua-pause").first).to_be_hidden()
    expect(page.locator(".iua-dashboard .iua-progress").first).to_be_hidden()

    # The legend is a row above the figures, not a box over the lines.
    legend = timeline.locator(".iua-timeline-legend")
    expect(legend).to_contain_text("act1", timeout=ROUND_TRIP_MS)
    expect(legend).to_contain_text("act2")
    assert timeline.locator(".g_legend text").count() == 0
    legend_box = legend.bounding_box()
    plot_box = timeline.locator(".iua-timeline-dead").bounding_box()
    assert legend_box["y"] + legend_box["height"] <= plot_box["y"] + 1

    dead_figure = timeline.locator(".iua-timeline-dead")
    # Two thin lines (one per layer) and the thick line of the selected layer.
    lines = dead_figure.evaluate(READ_LINES)
    drawn = [line for line in lines if line["d"]]
    assert [float(line["opacity"]) for line in drawn] == [0.35, 1.0, 1.0], lines

    # Dragging the timeline's slider handle to the right end selects the largest grid atol,
    # and the dashboard of the latest snapshot follows.
    handle = timeline.locator(".iua-timeline-atol .noUi-handle")
    track = timeline.locator(".iua-timeline-atol .noUi-target").bounding_box()
    box = handle.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(track["x"] + track["width"] + 50, box["y"] + box["height"] / 2, steps=10)
    page.mouse.up()
    title = dead_figure.locator(".mainheading")
    expect(title).to_have_text("Dead units, atol=100", timeout=ROUND_TRIP_MS)
    dashboard_readout = page.locator(".iua-dashboard .iua-atol .widget-readout").first
    expect(dashboard_readout).to_have_text("100", timeout=ROUND_TRIP_MS)

    # Typing an atol into the dashboard moves the timeline back.
    atol_text = page.locator(".iua-dashboard .iua-atol-text input").first
    atol_text.fill("0.1")
    atol_text.press("Enter")
    expect(title).to_have_text("Dead units, atol=0.1", timeout=ROUND_TRIP_MS)
    expect(timeline.locator(".iua-timeline-atol .widget-readout")).to_have_text(
        "0.1", timeout=ROUND_TRIP_MS
    )
    act2_row = page.locator(".iua-layer-table tr[data-row='act2'] td[data-column='dead_pct']")
    shown = float(wait_for_stable_text(act2_row).strip())
    assert shown == pytest.approx(expected["dead_at_0.1"]["act2"], abs=0.01)

    page.locator(".iua-timeline-layer select").select_option("act1")
    heading = page.locator(".iua-dashboard .iua-heatmap .mainheading").first
    expect(heading).to_contain_text("act1", timeout=ROUND_TRIP_MS)
    assert cell_errors(page) == []
