"""Dashboard engine switching and view state: set_source, view_state, apply, save and load."""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pytest

from iua_widgets import IUA, StreamingIUA
from iua_widgets.widgets.dashboard import Dashboard
from iua_widgets.widgets.view_state import VIEW_KEYS, view_state_path

from .test_widgets_dashboard import XSS, make_engine
from .widget_recorder import browser_update

#: A view that differs from the default in every key.
CUSTOM_VIEW = {
    "layer": "conv", "atol": 1e-6, "rtol": 0.5, "dead_alert": 0.2,
    "sort_column": "dead_pct", "sort_ascending": False,
    "heatmap_mode": "channel", "heatmap_channel": 2,
}


def custom_dashboard(engine: StreamingIUA) -> Dashboard:
    """A dashboard brought to ``CUSTOM_VIEW`` through its controls, as a user would."""
    dash = Dashboard(engine)
    dash.layer = "conv"
    dash.atol = 1e-6
    dash.thresholds.rtol_box.value = 0.5
    dash.dead_alert = 0.2
    browser_update(dash.table, sort_column="dead_pct", sort_ascending=False)
    browser_update(dash.heatmap.channel_select, index=3)  # option 0 is the channel mean
    return dash


def assert_same_view(shown: Dashboard, want: Dashboard) -> None:
    pd.testing.assert_frame_equal(shown.table_frame(), want.table_frame())
    assert shown.table_frame().attrs == want.table_frame().attrs
    np.testing.assert_array_equal(shown.heatmap.grid.values, want.heatmap.grid.values)
    np.testing.assert_array_equal(shown.heatmap.mark.color, want.heatmap.mark.color)
    assert shown.heatmap.figure.title == want.heatmap.figure.title
    assert shown.drilldown.table.rows == want.drilldown.table.rows


def test_view_state_lists_every_setting():
    dash = custom_dashboard(make_engine())
    state = dash.view_state()
    assert state == CUSTOM_VIEW
    assert tuple(state) == VIEW_KEYS
    assert json.loads(json.dumps(state)) == state
    # The heatmap shows channel 2 of the conv layer.
    want = dash.engine.layer_result("conv", atol=1e-6).unit_inactive_proportion[2]
    np.testing.assert_array_equal(dash.heatmap.grid.values, want.astype(np.float32))


def test_default_view_state():
    engine = make_engine()
    assert Dashboard(engine).view_state() == {
        "layer": "conv", "atol": 1e-8, "rtol": engine.rtol, "dead_alert": 0.1,
        "sort_column": "layer", "sort_ascending": True,
        "heatmap_mode": "mean", "heatmap_channel": None,
    }


def test_constructor_restores_view_state():
    engine = make_engine()
    original = custom_dashboard(engine)
    restored = Dashboard(engine, **original.view_state())
    assert restored.view_state() == CUSTOM_VIEW
    assert_same_view(restored, original)


def test_apply_view_state_restores_view():
    engine = make_engine()
    original = custom_dashboard(engine)
    dash = Dashboard(engine)
    dash.apply_view_state(original.view_state())
    assert dash.view_state() == CUSTOM_VIEW
    assert_same_view(dash, original)
    dash.apply_view_state({"heatmap_mode": "mean", "sort_ascending": True})
    assert dash.view_state() == {
        **CUSTOM_VIEW, "heatmap_mode": "mean", "heatmap_channel": None, "sort_ascending": True,
    }


@pytest.mark.parametrize(
    ("state", "error", "match"),
    [
        ({"layer": "dense", "atol": 3e-8}, ValueError, "not on the threshold grid"),
        ({"layer": "ghost"}, ValueError, "No layer named 'ghost'"),
        ({"atol": "1e-6"}, TypeError, "atol must be a real number"),
        ({"sort_column": "colour"}, ValueError, "Unknown sort column 'colour'"),
        ({"zoom": 2}, ValueError, "Unknown view state keys \\['zoom'\\]"),
        ({"layer": "conv", "heatmap_channel": 4}, ValueError, "channels 0 to 3"),
        ({"layer": "dense", "heatmap_channel": 0}, ValueError, "has no channels"),
        ({"heatmap_mode": "mean", "heatmap_channel": 1}, ValueError, "must be None"),
        ({"dead_alert": 1.5, "layer": "dense"}, ValueError, "between 0 and 1"),
    ],
)
def test_invalid_view_state_changes_nothing(state, error, match):
    dash = custom_dashboard(make_engine())
    before = dash.table_frame()
    with pytest.raises(error, match=match):
        dash.apply_view_state(state)
    assert dash.view_state() == CUSTOM_VIEW
    pd.testing.assert_frame_equal(dash.table_frame(), before)


def test_channel_of_empty_engine_waits():
    engine = StreamingIUA()
    dash = Dashboard(
        engine, layer="conv", heatmap_mode="channel", heatmap_channel=1, redraw_interval=0.0
    )
    assert dash.view_state()["heatmap_channel"] == 1
    conv = np.zeros((3, 2, 4, 4))
    conv[:, 0] = 1.0
    engine.update({"dense": np.zeros((3, 5)), "conv": conv})
    assert dash.layer == "conv"
    assert dash.heatmap.channel_select.value == 1
    np.testing.assert_array_equal(dash.heatmap.grid.values, np.ones((4, 4), dtype=np.float32))


def test_save_and_load_round_trip(tmp_path):
    original = custom_dashboard(make_engine())
    path = original.save(tmp_path / "run.npz")
    assert path == tmp_path / "run.npz"
    view_file = tmp_path / "run.npz.view.json"
    assert view_state_path(path) == view_file
    document = json.loads(view_file.read_text())
    assert document["view"] == CUSTOM_VIEW

    loaded = Dashboard.load(path)
    assert loaded.engine is not original.engine
    assert loaded.view_state() == CUSTOM_VIEW
    assert_same_view(loaded, original)


def test_load_without_view_file(tmp_path):
    engine = make_engine()
    path = engine.save(tmp_path / "run.npz")
    loaded = Dashboard.load(path)
    assert loaded.view_state() == Dashboard(engine).view_state()
    # A loaded file has no stream: its count and where it came from, no bar or buttons.
    assert loaded.progress.label.value == f"{engine.inputs_seen:,} inputs (loaded)"
    assert loaded.progress.bar.layout.display == "none"
    assert loaded.progress.cancel_button.layout.display == "none"


def test_load_rejects_newer_view_file(tmp_path):
    dash = Dashboard(make_engine())
    path = dash.save(tmp_path / "run.npz")
    view_file = view_state_path(path)
    document = json.loads(view_file.read_text())
    document["version"] = 2
    view_file.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="view format version 2"):
        Dashboard.load(path)
    view_file.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid view file"):
        Dashboard.load(path)


def other_engine(seed: int) -> StreamingIUA:
    """Same layers as ``make_engine``, other numbers."""
    return make_engine(seed=seed)


def test_set_source_keeps_view():
    first, second = make_engine(seed=0), other_engine(seed=1)
    dash = custom_dashboard(first)
    dash.set_source(second)
    assert dash.engine is second
    assert dash.view_state() == CUSTOM_VIEW
    assert_same_view(dash, Dashboard(second, **CUSTOM_VIEW))


def test_set_source_follows_new_engine_only():
    first, second = make_engine(seed=0), other_engine(seed=1)
    dash = Dashboard(first, redraw_interval=0.0)
    dash.set_source(second)
    rng = np.random.default_rng(5)
    batch = {"conv": rng.normal(size=(4, 4, 6, 5)), "dense": rng.normal(size=(4, 12))}
    first.update(batch)
    assert dash.table_frame().set_index("layer")["inputs"].to_dict() == {
        XSS: 48, "conv": 48, "dense": 48,
    }
    second.update(batch)
    assert dash.table_frame().set_index("layer")["inputs"].to_dict() == {
        XSS: 48, "conv": 52, "dense": 52,
    }


def test_set_source_other_layers_and_grid():
    dash = Dashboard(StreamingIUA(atol=3e-3).consume({"wide": np.ones((4, 6))}), atol=3e-3)
    assert dash.atol == 3e-3
    iua = IUA.introspect({"a": np.zeros((5, 3)), "b": np.zeros((5, 2))})
    dash.set_source(iua)
    assert dash.layer == "a"
    # 3e-3 is not on the default grid, so the new engine's starting atol is shown.
    assert dash.atol == 1e-8
    assert 3e-3 not in [value for _, value in dash.thresholds.slider.options]
    assert dash.thresholds.text.value == "1e-08"
    frame = dash.table_frame()
    assert list(frame["layer"]) == ["a", "b"]
    assert frame.attrs["atol"] == 1e-8
    assert dash.progress.label.value == "5 inputs"


def test_set_source_while_streaming_rejected():
    gate = threading.Event()
    dash = Dashboard(StreamingIUA())

    def producer():
        gate.wait(timeout=60)
        yield {"fc": np.zeros((2, 2))}

    dash.stream(producer())
    with pytest.raises(RuntimeError, match="cancel\\(\\) and wait\\(\\)"):
        dash.set_source(make_engine())
    gate.set()
    assert dash.wait(timeout=60).state == "finished"
    with pytest.raises(TypeError, match="StreamingIUA or an IUA"):
        dash.set_source("run.npz")
