"""Dashboard trait state without a browser: table, threshold, selection, drill-down, export."""

from __future__ import annotations

import gc
import math
import sys
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

import iua_widgets
from iua_widgets import IUA, StreamingIUA
from iua_widgets.results.table import results_frame
from iua_widgets.widgets.controls import RTOL_NO_EFFECT
from iua_widgets.widgets.dashboard import Dashboard
from iua_widgets.widgets.drilldown import TOP_UNITS, activity_histogram, top_units
from iua_widgets.widgets.heatmap import mark_color
from iua_widgets.widgets.heatmap_grid import (
    MAX_SIDE,
    PADDING_COLOR,
    heatmap_grid,
    to_rgb,
)
from iua_widgets.widgets.layer_table import read_table_csv
from iua_widgets.widgets.png import read_png

from .widget_recorder import browser_update, install

XSS = "<img src=x onerror=alert(1)>"


def make_engine(*, atol: float = 1e-8, seed: int = 0) -> StreamingIUA:
    rng = np.random.default_rng(seed)
    engine = StreamingIUA(atol=atol)
    for _ in range(3):
        conv = np.maximum(rng.normal(size=(16, 4, 6, 5)), 0)
        conv[:, 0] = 0.0  # channel 0 is dead
        dense = np.maximum(rng.normal(size=(16, 12)), 0) * rng.choice([0, 1e-9, 1e-7, 1], size=(16, 12))
        dense[:, :3] = 0.0  # 3 of 12 dense units are dead
        engine.update({"conv": conv, "dense": dense, XSS: rng.normal(size=(16, 3))})
    return engine


def expected_rows(engine: StreamingIUA, atol: float) -> pd.DataFrame:
    frame = results_frame(engine.results_at(atol=atol)).rename(columns={"response": "layer"})
    return frame.sort_values("layer", kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("atol", [0.0, 1e-8, 2e-8, 1e-6, 0.5])
def test_table_matches_results_frame(atol):
    engine = make_engine()
    dash = Dashboard(engine)
    dash.atol = atol
    frame = dash.table_frame()
    assert frame.attrs["atol"] == atol
    want = expected_rows(engine, atol)
    pd.testing.assert_frame_equal(frame.drop(columns="flagged"), want, check_dtype=False)


def test_sort_trait_orders_table():
    dash = Dashboard(make_engine())
    browser_update(dash.table, sort_column="dead_pct", sort_ascending=False)
    frame = dash.table_frame()
    assert list(frame["dead %"]) == sorted(frame["dead %"], reverse=True)
    assert list(frame["layer"]) == [row["layer"] for row in dash.table.rows]
    browser_update(dash.table, sort_column="units", sort_ascending=True)
    assert list(dash.table_frame()["units"]) == sorted(frame["units"])


def test_threshold_change_uses_cache_only(monkeypatch):
    engine = make_engine()
    dash = Dashboard(engine, layer="dense")

    def no_more_batches(batch):
        raise AssertionError("a threshold change must not feed the engine")

    monkeypatch.setattr(engine, "update", no_more_batches)
    for atol in (0.0, 1e-7, 2e-8):
        dash.thresholds.slider.value = atol
        want = engine.layer_result("dense", atol=atol).unit_inactive_proportion
        # The dense rule for 12 units: one row of 12 cells, no averaging.
        np.testing.assert_array_equal(dash.heatmap.grid.values, want.reshape(1, 12).astype(np.float32))
        np.testing.assert_array_equal(dash.heatmap.mark.color, mark_color(want.reshape(1, 12)))
    assert engine.batches_seen == 3


def test_threshold_change_conv_heatmap_is_channel_mean():
    engine = make_engine()
    dash = Dashboard(engine, layer="conv")
    dash.atol = 0.5
    want = engine.layer_result("conv", atol=0.5).unit_inactive_proportion
    independent = np.mean(want, axis=0)
    np.testing.assert_allclose(dash.heatmap.grid.values, independent.astype(np.float32), rtol=1e-6)
    assert "conv" in dash.heatmap.figure.title


def test_atol_text_box_snaps_to_grid():
    dash = Dashboard(make_engine())
    dash.thresholds.text.value = "3e-8"
    assert dash.atol == 2e-8
    assert dash.thresholds.text.value == "2e-08"
    assert "snapped to 2e-08" in dash.thresholds.note.value
    dash.thresholds.text.value = "0"
    assert dash.atol == 0.0
    assert dash.table_frame().attrs["atol"] == 0.0
    dash.thresholds.text.value = "abc"
    assert dash.atol == 0.0
    assert "not a valid atol" in dash.thresholds.note.value
    labels = [label for label, _ in dash.thresholds.slider.options]
    assert "1e-08" in labels
    assert "2e-08" in labels
    assert labels[0] == "0"
    dash.atol = 1e-8
    assert dash.thresholds.slider.label == "1e-08"


def test_off_grid_atol_rejected():
    engine = make_engine()
    with pytest.raises(ValueError, match="not on the threshold grid"):
        Dashboard(engine, atol=3e-8)
    dash = Dashboard(engine, atol=5e-8)
    assert dash.atol == 5e-8
    with pytest.raises(ValueError, match="nearest grid values are 2e-08 and 5e-08"):
        dash.atol = 3e-8


def test_rtol_marked_and_without_effect():
    engine = make_engine()
    dash = Dashboard(engine)
    before = dash.table_frame()
    assert "no effect against a zero reference" in dash.thresholds.rtol_note.value
    dash.thresholds.rtol_box.value = 0.5
    after = dash.table_frame()
    assert after.attrs["rtol"] == 0.5
    pd.testing.assert_frame_equal(before, after)
    dash.thresholds.rtol_box.value = -1.0
    assert dash.thresholds.rtol == 0.5
    assert dash.thresholds.rtol_box.value == 0.5


def test_invalid_rtol_error_in_rtol_note():
    dash = Dashboard(make_engine())
    dash.thresholds.rtol_box.value = -1.0
    rtol_note = dash.thresholds.rtol_note.value
    assert "rtol must be finite and &gt;= 0, got -1.0" in rtol_note
    assert "no effect against a zero reference" in rtol_note
    assert dash.thresholds.note.value == ""
    dash.thresholds.rtol_box.value = 0.25
    assert dash.thresholds.rtol_note.value == RTOL_NO_EFFECT
    assert dash.table_frame().attrs["rtol"] == 0.25


def test_row_click_selects_layer():
    engine = make_engine()
    dash = Dashboard(engine)
    assert dash.layer == "conv"  # first layer to arrive
    browser_update(dash.table, selected="dense")
    assert dash.layer == "dense"
    assert dash.layer_select.value == "dense"
    assert dash.heatmap.figure.title.startswith("dense · ")
    assert dash.drilldown.table.caption.startswith("dense: top 12 of 12 units")
    dash.layer_select.value = "conv"
    assert dash.table.selected == "conv"
    with pytest.raises(ValueError, match="No layer named 'fc9'"):
        dash.layer = "fc9"


def test_alerts_flag_dead_and_nonfinite():
    engine = make_engine()
    bad = np.ones((4, 5))
    bad[0, 0] = np.nan
    bad[1, 1] = np.inf
    conv, dense = np.ones((4, 4, 6, 5)), np.ones((4, 12))
    conv[:, 0] = 0.0
    dense[:, :3] = 0.0
    with pytest.warns(RuntimeWarning, match="2 NaN or infinite values"):
        engine.update({"conv": conv, "dense": dense, XSS: np.ones((4, 3)), "bad": bad})
    dash = Dashboard(engine, dead_alert=0.2)
    # dense: 3 of 12 units dead (25 %); conv: 1 of 4 channels = 25 % of its units.
    assert set(dash.table.flagged) == {"dense", "conv", "bad"}
    assert "2 nonfinite values" in dash.table.flag_notes["bad"]
    assert "25.0 % dead units" in dash.table.flag_notes["dense"]
    dash.dead_alert = 0.3
    assert set(dash.table.flagged) == {"bad"}
    frame = dash.table_frame()
    assert frame.set_index("layer").loc["bad", "flagged"]
    assert frame.set_index("layer").loc["bad", "nonfinite"] == 2
    with pytest.raises(ValueError, match="dead_alert"):
        dash.dead_alert = 1.5


def test_unit_table_top_units_largest_first():
    rng = np.random.default_rng(7)
    engine = StreamingIUA()
    values = rng.normal(size=(9, 20, 30)) * (rng.random((20, 30)) > 0.3)
    engine.update({"wide": np.where(np.abs(values) < 0.5, 0.0, values)})
    dash = Dashboard(engine)
    result = engine.layer_result("wide")
    counts = result.unit_inactive_count.reshape(-1)
    brute = sorted(range(counts.size), key=lambda i: (-counts[i], i))[:TOP_UNITS]
    rows = dash.drilldown.table.rows
    assert [row["flat_index"] for row in rows] == brute
    first = np.unravel_index(brute[0], (20, 30))
    assert rows[0]["unit"] == f"({first[0]}, {first[1]})"
    assert rows[0]["inactive"] == counts[brute[0]]
    assert all(row["dead"] == (row["inactive"] == 9) for row in rows)
    assert dash.drilldown.table.caption.startswith(f"wide: top {TOP_UNITS} of 600 units")


def test_top_units_handles_ties_at_cut():
    counts = np.array([5, 1, 5, 3, 5, 3, 0])
    assert list(top_units(counts, 4)) == [0, 2, 4, 3]
    assert list(top_units(counts, 10)) == [0, 2, 4, 3, 5, 1, 6]


def test_histogram_counts_brute_force():
    engine = make_engine()
    dash = Dashboard(engine, layer="dense")
    dash.atol = 1e-7
    result = engine.layer_result("dense", atol=1e-7)
    want = [0] * 11
    for count in result.unit_inactive_count.reshape(-1):
        share = Fraction(int(count), result.inputs)
        want[10 if share == 1 else math.floor(share * 10)] += 1
    assert list(dash.drilldown.counts) == want
    assert list(activity_histogram(result)) == want
    heights = np.asarray(dash.drilldown.bars.y)
    np.testing.assert_array_equal(heights, np.where(np.array(want) > 0, want, 0.5))


def test_export_csv_and_png(tmp_path):
    engine = make_engine()
    dash = Dashboard(engine, layer="conv")
    browser_update(dash.table, sort_column="mean_inactive", sort_ascending=False)
    path = dash.to_csv(tmp_path / "layers.csv")
    written = pd.read_csv(path)
    assert list(written["layer"]) == list(dash.table_frame()["layer"])
    png = dash.save_heatmap_png(tmp_path / "heatmap.png", size=60)
    pixels = read_png(png.read_bytes())
    values = dash.heatmap.grid.values  # 6 x 5 cells of the conv channel mean
    factor = 60 // max(values.shape)
    assert pixels.shape == (values.shape[0] * factor, values.shape[1] * factor, 3)
    np.testing.assert_array_equal(pixels[::factor, ::factor], to_rgb(values))


def test_markup_layer_name_is_text(monkeypatch):
    recorder = install(monkeypatch)
    dash = Dashboard(make_engine())
    rows = [m.data["state"]["rows"] for m in recorder.updates(dash.table.model_id) if "rows" in m.data["state"]]
    opened = [m.data["state"]["rows"] for m in recorder.messages if m.comm_id == dash.table.model_id and m.msg_type == "comm_open"]
    sent = (rows or opened)[-1]
    assert XSS in [row["layer"] for row in sent]
    assert XSS in dash.layer_select.options
    dash.layer = XSS
    assert dash.heatmap.figure.title.startswith(XSS)
    dash.errors.report(f"layer {XSS} failed")
    assert XSS not in dash.errors.value
    assert "&lt;img src=x onerror=alert(1)&gt;" in dash.errors.value


def test_dashboard_of_iua_and_lazy_export():
    rng = np.random.default_rng(8)
    iua = IUA.introspect({"fc": np.maximum(rng.normal(size=(10, 4)), 0)}, batch_size=4)
    dash = iua_widgets.Dashboard(iua)
    assert isinstance(dash, Dashboard)
    assert dash.engine is iua.engine
    assert "iua-dashboard" in dash._dom_classes
    assert dash.progress.label.value == "10 inputs (analysed)"
    with pytest.raises(TypeError, match="StreamingIUA or an IUA"):
        Dashboard(object())


def test_million_unit_layer_heatmap_size():
    engine = StreamingIUA(per_input="none")
    engine.update({"huge": np.zeros((2, 1_000_000), dtype=np.float32)})
    dash = Dashboard(engine)
    values = dash.heatmap.grid.values
    assert values.shape[0] <= MAX_SIDE
    assert values.shape[1] <= MAX_SIDE
    assert dash.heatmap.mark.color.size <= MAX_SIDE**2
    assert "mean of 16 consecutive units per cell" in dash.heatmap.figure.title
    np.testing.assert_array_equal(values, heatmap_grid(np.ones(1_000_000)).values)
    assert len(dash.drilldown.table.rows) == TOP_UNITS


def test_css_classes_present():
    dash = Dashboard(make_engine())
    classes = {
        "iua-dashboard": dash, "iua-layer-select": dash.layer_select,
        "iua-atol": dash.thresholds.slider, "iua-atol-text": dash.thresholds.text,
        "iua-rtol": dash.thresholds.rtol_box, "iua-layer-table": dash.table,
        "iua-heatmap": dash.heatmap.figure, "iua-progress": dash.progress.bar,
        "iua-progress-label": dash.progress.label, "iua-pause": dash.progress.pause_button,
        "iua-resume": dash.progress.resume_button, "iua-cancel": dash.progress.cancel_button,
        "iua-errors": dash.errors, "iua-unit-table": dash.drilldown.table,
        "iua-unit-histogram": dash.drilldown.histogram,
    }
    for css_class, widget in classes.items():
        assert css_class in widget._dom_classes, css_class
    assert all(f"``{name}``" in Dashboard.__module__ or True for name in classes)
    import iua_widgets.widgets.dashboard as module

    for css_class in classes:
        assert f"``{css_class}``" in module.__doc__, css_class


def test_slider_move_clears_snap_note():
    dash = Dashboard(make_engine())
    dash.thresholds.text.value = "3e-8"
    assert "snapped" in dash.thresholds.note.value
    dash.thresholds.slider.value = 5e-7
    assert dash.thresholds.note.value == ""
    assert dash.thresholds.text.value == "5e-07"


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda engine: Dashboard(5), TypeError, "StreamingIUA or an IUA"),
        (lambda engine: Dashboard(engine, atol=3e-3), ValueError, "not on the threshold grid"),
        (lambda engine: Dashboard(engine, dead_alert=2), ValueError, "dead_alert must be a fraction"),
        (lambda engine: Dashboard(engine, layer="nope"), ValueError, "No layer named 'nope'"),
    ],
    ids=["not an engine", "off-grid atol", "dead_alert 2", "unknown layer"],
)
def test_failed_constructor_no_unraisable(monkeypatch, build, error, match):
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    engine = make_engine()
    with pytest.raises(error, match=match) as info:
        build(engine)
    del info  # its traceback keeps the half-built dashboard alive
    gc.collect()
    assert [str(hook.exc_value) for hook in unraisable] == []


def test_close_on_unbuilt_dashboard():
    unbuilt = Dashboard.__new__(Dashboard)
    unbuilt.close()
    assert unbuilt.comm is None


def test_unknown_layer_lists_known_layers():
    iua = IUA.introspect({"a": np.zeros((10, 5)), "b": np.ones((10, 2))})
    with pytest.raises(ValueError, match=r"No layer named 'nope'; known layers: \['a', 'b'\]"):
        Dashboard(iua, layer="nope")


def test_layer_of_empty_engine_waits():
    engine = StreamingIUA()
    dash = Dashboard(engine, layer="b", redraw_interval=0.0)
    assert dash.layer is None
    engine.update({"a": np.zeros((2, 3)), "b": np.zeros((2, 4))})
    assert dash.layer == "b"


def test_ghost_table_selection_reverted(monkeypatch):
    recorder = install(monkeypatch)
    dash = Dashboard(make_engine())
    assert dash.layer == "conv"
    dash.table.selected = "ghost"
    assert dash.table.selected == "conv"
    assert dash.layer == "conv"
    recorder.clear()
    browser_update(dash.table, selected="ghost")
    assert dash.table.selected == "conv"
    assert dash.layer_select.value == "conv"
    # The browser showed "ghost" selected; it is sent the kept selection.
    sent = [m.data["state"]["selected"] for m in recorder.updates(dash.table.model_id)
            if "selected" in m.data["state"]]
    assert sent[-1:] == ["conv"]


@pytest.mark.parametrize("size", [0, -5, 8193, True, 2.5, "512"])
def test_png_size_out_of_range_rejected(tmp_path, size):
    dash = Dashboard(make_engine(), layer="conv")
    target = tmp_path / "heatmap.png"
    with pytest.raises(ValueError, match="size must be an int from 1 to 8192 pixels"):
        dash.save_heatmap_png(target, size=size)
    assert not target.exists()


def test_png_size_limits_accepted(tmp_path):
    dash = Dashboard(make_engine(), layer="conv")
    values = dash.heatmap.grid.values  # 6 x 5 cells
    small = read_png(dash.save_heatmap_png(tmp_path / "small.png", size=1).read_bytes())
    assert small.shape == (*values.shape, 3)
    np.testing.assert_array_equal(small, to_rgb(values))
    large = read_png(dash.save_heatmap_png(tmp_path / "large.png", size=np.int64(8192)).read_bytes())
    factor = 8192 // 6
    assert large.shape == (6 * factor, 5 * factor, 3)


@pytest.mark.parametrize("value", ["1e-3", "0", True, np.bool_(False), None, [1e-8]])
def test_atol_non_number_rejected(value):
    dash = Dashboard(make_engine())
    dash.atol = 1e-6
    with pytest.raises(TypeError, match="atol must be a real number"):
        dash.atol = value
    assert dash.atol == 1e-6


def test_atol_numpy_numbers_accepted():
    dash = Dashboard(make_engine())
    dash.atol = np.float64(2e-8)
    assert dash.atol == 2e-8
    dash.atol = 0
    assert dash.atol == 0.0
    dash.atol = np.int64(1)
    assert dash.atol == 1.0
    with pytest.raises(TypeError, match="atol must be a real number"):
        Dashboard(make_engine(), atol="1e-8")
    with pytest.raises(TypeError, match="dead_alert must be a real number"):
        Dashboard(make_engine(), dead_alert="0.5")
    with pytest.raises(TypeError, match="dead_alert must be a real number"):
        dash.dead_alert = True


def test_layer_names_sort_naturally():
    engine = StreamingIUA()
    engine.update({name: np.zeros((2, 3)) for name in ["layer10", "layer2", "layer1", "head"]})
    dash = Dashboard(engine)
    natural = ["head", "layer1", "layer2", "layer10"]
    assert list(dash.table_frame()["layer"]) == natural
    assert [row["layer"] for row in dash.table.rows] == natural
    browser_update(dash.table, sort_ascending=False)
    assert list(dash.table_frame()["layer"]) == natural[::-1]
    # Equal keys keep the engine's order in both directions.
    browser_update(dash.table, sort_column="units", sort_ascending=True)
    assert list(dash.table_frame()["layer"]) == ["layer10", "layer2", "layer1", "head"]


def test_csv_keeps_threshold_settings(tmp_path):
    engine = make_engine()
    dash = Dashboard(engine, atol=2e-8, rtol=0.5, dead_alert=0.2)
    browser_update(dash.table, sort_column="mean_inactive", sort_ascending=False)
    frame = dash.table_frame()
    path = dash.to_csv(tmp_path / "layers.csv")

    plain = pd.read_csv(path)
    assert list(plain["atol"].unique()) == [2e-8]
    assert list(plain["rtol"].unique()) == [0.5]
    assert list(plain["dead_alert"].unique()) == [0.2]
    assert list(plain["layer"]) == list(frame["layer"])

    back = read_table_csv(path)
    pd.testing.assert_frame_equal(back, frame)
    assert back.attrs == {"atol": 2e-8, "rtol": 0.5, "dead_alert": 0.2}


def test_csv_layer_names_stay_text(tmp_path):
    engine = StreamingIUA()
    engine.update({name: np.zeros((2, 3)) for name in ["1", "NA", "a,b", 'q"uote']})
    dash = Dashboard(engine)
    back = read_table_csv(dash.to_csv(tmp_path / "layers.csv"))
    assert list(back["layer"]) == ["1", "NA", "a,b", 'q"uote']
    pd.testing.assert_frame_equal(back, dash.table_frame())


def test_alert_note_explains_red_rows():
    dash = Dashboard(make_engine(), dead_alert=0.2)
    assert "iua-alert-note" in dash.alert_note._dom_classes
    assert dash.children.index(dash.alert_note) == dash.children.index(dash.table) + 1
    assert "red</span>: ≥ 20 % dead units or NaN/inf values" in dash.alert_note.value
    dash.dead_alert = 0.05
    assert "≥ 5 % dead units" in dash.alert_note.value
    dash.apply_view_state({"dead_alert": 0.125})
    assert "≥ 12.5 % dead units" in dash.alert_note.value


def test_large_counts_have_thousands_separators():
    engine = StreamingIUA(per_input="none")
    engine.update({"huge": np.zeros((2, 1_000_000), dtype=np.float32)})
    engine.update({"small": np.zeros((1_500, 3), dtype=np.float32)})
    dash = Dashboard(engine, layer="huge")
    assert dash.heatmap.figure.title.startswith("huge · 1,000,000 units · rows of 250, ")
    assert dash.drilldown.table.caption == (
        "huge: top 200 of 1,000,000 units by inactive inputs (of 2), largest first"
    )
    assert dash.drilldown.histogram.title == "huge: units by inactive proportion (1,000,000 dead)"
    assert dash.progress.label.value == "1,502 inputs"
    # The table keeps raw numbers, so it sorts by value; the browser adds the separators.
    assert {row["units"] for row in dash.table.rows} == {1_000_000, 3}


def test_png_paints_padding_grey(tmp_path):
    values = np.ones((3, 127))
    values[:, :120] = 0.0  # the last 7 units are never inactive, the others dead
    dash = Dashboard(IUA.introspect({"fc": values}))
    grid = dash.heatmap.grid  # 127 units in rows of 12: five padding cells at the end
    assert grid.padding == 5
    pixels = read_png(dash.save_heatmap_png(tmp_path / "fc.png", size=12).read_bytes())
    grey = [int(PADDING_COLOR[i : i + 2], 16) for i in (1, 3, 5)]
    never_inactive = to_rgb(np.zeros(1))[0].tolist()
    assert pixels.shape == (11, 12, 3)
    assert [pixels[10, col].tolist() for col in range(12)] == [never_inactive] * 7 + [grey] * 5
