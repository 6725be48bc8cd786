"""Training timeline and training dashboard trait state, without a browser."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from iua_widgets.models.mlp import (
    HIDDEN_LAYERS,
    HIGH_LR,
    build_digits_mlp,
    digits_tracker,
    train_digits_mlp,
)
from iua_widgets.widgets.timeline import (
    TrainingTimeline,
    _last_of_each_epoch,
    epoch_points,
    integer_ticks,
)
from iua_widgets.widgets.training import TrainingDashboard

from .widget_recorder import browser_update, install


@pytest.fixture(scope="module")
def trained():
    model = build_digits_mlp(seed=0)
    tracker = digits_tracker(model, every=15)
    train_digits_mlp(model, lr=HIGH_LR, epochs=4, tracker=tracker)
    return tracker


def expected_percent(tracker, atol, column):
    frame = tracker.timeline(atol=atol)
    return np.array([frame[frame["layer"] == name][column].to_numpy() for name in HIDDEN_LAYERS])


def test_timeline_draws_tracker_curves(trained, monkeypatch):
    install(monkeypatch)
    timeline = TrainingTimeline(trained)
    steps = [snapshot.step for snapshot in trained.snapshots]
    assert list(timeline.dead_plot.lines.x) == steps
    np.testing.assert_array_equal(timeline.dead_plot.lines.y, expected_percent(trained, 1e-8, "dead %"))
    np.testing.assert_array_equal(
        timeline.inactive_plot.lines.y, expected_percent(trained, 1e-8, "mean inactive %")
    )
    assert list(timeline.dead_plot.lines.labels) == list(HIDDEN_LAYERS)
    assert timeline.status.value.startswith(f"{len(steps)} snapshots; last at step {steps[-1]}")


def test_timeline_atol_recomputes_from_cache(trained, monkeypatch):
    recorder = install(monkeypatch)
    timeline = TrainingTimeline(trained)
    recorder.clear()
    browser_update(timeline.atol_slider, index=list(trained.grid).index(0.1))
    assert timeline.atol == 0.1
    np.testing.assert_array_equal(timeline.dead_plot.lines.y, expected_percent(trained, 0.1, "dead %"))
    assert "atol=0.1" in timeline.dead_plot.figure.title
    assert recorder.updates(timeline.dead_plot.lines.model_id)


def test_timeline_highlights_selected_layer(trained, monkeypatch):
    install(monkeypatch)
    timeline = TrainingTimeline(trained, layer="act2")
    assert timeline.dead_plot.lines.opacities == [0.35, 1.0]
    np.testing.assert_array_equal(timeline.dead_plot.selected.y, timeline.dead_plot.lines.y[1])
    timeline.layer = "act1"
    assert timeline.dead_plot.lines.opacities == [1.0, 0.35]
    np.testing.assert_array_equal(timeline.inactive_plot.selected.y, timeline.inactive_plot.lines.y[0])
    with pytest.raises(ValueError, match="No tracked layer named 'fc1'"):
        timeline.layer = "fc1"


def test_timeline_against_epoch(trained, monkeypatch):
    install(monkeypatch)
    timeline = TrainingTimeline(trained, x="epoch")
    frame = trained.timeline()
    act1 = frame[frame["layer"] == "act1"]
    before = act1[act1["step"] == 0]
    last_of_epoch = act1.dropna(subset=["epoch"]).groupby("epoch").tail(1)
    # The untrained state at 0, then the end of each of the 4 epochs.
    assert list(timeline.dead_plot.lines.x) == [0.0, 1.0, 2.0, 3.0, 4.0]
    want = np.concatenate([before["dead %"].to_numpy(), last_of_epoch["dead %"].to_numpy()])
    np.testing.assert_array_equal(timeline.dead_plot.lines.y[0], want)
    assert len(before) == 1
    assert list(last_of_epoch["step"]) == [45, 90, 135, 180]
    assert timeline.dead_plot.x_axis.label == "epochs completed (0 = before training)"


def test_last_of_each_epoch():
    epochs = np.array([np.nan, 0, 0, 1, 1, 1, 3, np.nan])
    assert list(_last_of_each_epoch(epochs)) == [2, 5, 6]
    assert list(_last_of_each_epoch(np.array([np.nan]))) == []


def test_timeline_updates_live(monkeypatch):
    install(monkeypatch)
    model = build_digits_mlp(seed=0)
    tracker = digits_tracker(model, every=10)
    timeline = TrainingTimeline(tracker, redraw_interval=0.0)
    assert timeline.status.value == "No snapshot yet."
    drawn = []
    tracker.observe(lambda tracker: drawn.append(len(timeline.dead_plot.lines.x)))
    train_digits_mlp(model, lr=HIGH_LR, epochs=1, tracker=tracker)
    assert drawn[:3] == [1, 2, 3]  # each snapshot drawn before the next observer ran
    assert len(timeline.dead_plot.lines.x) == len(tracker.snapshots)
    timeline.close()
    tracker.snapshot()
    assert len(timeline.dead_plot.lines.x) == len(tracker.snapshots) - 1


def test_timeline_shows_observer_errors(monkeypatch):
    install(monkeypatch)
    model = build_digits_mlp(seed=0)
    tracker = digits_tracker(model)
    timeline = TrainingTimeline(tracker, redraw_interval=0.0)

    def broken(atol=None, **kwargs):
        raise RuntimeError("curves unavailable")

    monkeypatch.setattr(tracker, "curves", broken)
    tracker.snapshot()
    assert "curves unavailable" in timeline.errors.value


def test_training_dashboard_links_layer_and_atol(trained, monkeypatch):
    install(monkeypatch)
    view = TrainingDashboard(trained)
    dashboard = view.dashboard
    assert dashboard is not None
    assert dashboard.engine is trained.latest
    view.timeline.layer = "act2"
    assert dashboard.layer == "act2"
    browser_update(dashboard.layer_select, index=0)
    assert view.timeline.layer == "act1"
    view.timeline.atol = 1e-3
    assert dashboard.atol == 1e-3
    dashboard.atol = 0.5
    assert view.timeline.atol == 0.5


def test_training_dashboard_follows_latest_snapshot(monkeypatch):
    install(monkeypatch)
    model = build_digits_mlp(seed=0)
    tracker = digits_tracker(model, every=10)
    view = TrainingDashboard(tracker, redraw_interval=0.0, dashboard_interval=0.0)
    assert view.dashboard is None
    shown = []  # (dashboard, its engine) after each snapshot
    tracker.observe(lambda tracker: shown.append((view.dashboard, view.dashboard.engine)))
    train_digits_mlp(model, lr=HIGH_LR, epochs=1, tracker=tracker)
    assert view.dashboard.engine is tracker.latest
    # One dashboard switches from snapshot to snapshot instead of being rebuilt.
    assert all(dashboard is view.dashboard for dashboard, _ in shown)
    engines = {id(engine) for _, engine in shown}
    assert len(engines) == len(tracker.snapshots)
    frame = view.dashboard.table_frame().set_index("layer")
    last = tracker.timeline().groupby("layer").tail(1).set_index("layer")
    for layer in HIDDEN_LAYERS:
        assert frame.loc[layer, "dead %"] == last.loc[layer, "dead %"]


def test_epoch_points_put_untrained_at_zero():
    steps = np.array([0, 10, 20, 30, 40, 45, 50])
    epochs = np.array([np.nan, 0, 0, 0, 0, 1, np.nan])
    indices, x = epoch_points(steps, epochs)
    assert list(indices) == [0, 4, 5]
    assert list(x) == [0.0, 1.0, 2.0]
    # Without a step-0 snapshot nothing is drawn at 0.
    indices, x = epoch_points(steps[1:], epochs[1:])
    assert list(indices) == [3, 4]
    assert list(x) == [1.0, 2.0]


@pytest.mark.parametrize(
    ("low", "high", "ticks"),
    [
        (0, 3, [0, 1, 2, 3]),
        (0, 10, [0, 2, 4, 6, 8, 10]),
        (0, 135, [0, 20, 40, 60, 80, 100, 120]),
        (0, 450, [0, 100, 200, 300, 400]),
        (0, 0, [0]),
    ],
)
def test_integer_ticks_whole_numbers(low, high, ticks):
    assert list(integer_ticks(low, high)) == ticks


def test_timeline_axes_ticks_and_legend(trained, monkeypatch):
    install(monkeypatch)
    timeline = TrainingTimeline(trained, x="epoch", layer="act2")
    for plot in (timeline.dead_plot, timeline.inactive_plot):
        ticks = np.asarray(plot.x_axis.tick_values)
        assert plot.x_axis.tick_format == "d"
        assert list(ticks) == [0.0, 1.0, 2.0, 3.0, 4.0]  # no 0.5, 1.5, ...
        # The axis runs past the last point, so its tick label stays clear of the end.
        assert plot.x_scale.min < 0.0
        assert plot.x_scale.max > 4.0
        # No legend inside the plot area, where it covered the lines; no toolbar over the title.
        assert plot.lines.display_legend is False
        assert plot.figure.display_toolbar is False
    children = list(timeline.children)
    figures = next(
        child for child in children if timeline.dead_plot.figure in getattr(child, "children", ())
    )
    assert children.index(timeline.legend) == children.index(figures) - 1
    legend = timeline.legend.value
    assert "data-layer='act1'" in legend
    assert "data-layer='act2'" in legend
    assert "#1f77b4" in legend  # act1's line colour
    assert "#ff7f0e" in legend  # act2's line colour
    assert "font-weight: bold'><span style='display: inline-block; width: 22px; height: 4px; background: #ff7f0e" in legend

    browser_update(timeline.x_select, index=0)
    ticks = np.asarray(timeline.dead_plot.x_axis.tick_values)
    steps = [snapshot.step for snapshot in trained.snapshots]
    assert steps[-1] == 180
    assert list(ticks) == [0.0, 50.0, 100.0, 150.0]
    assert timeline.dead_plot.x_scale.max > 180


def test_legend_escapes_layer_names():
    from iua_widgets.widgets.timeline import legend_html

    text = legend_html(("<b>x</b>", "a'b"), selected=None)
    assert "<b>x</b>" not in text
    assert "&lt;b&gt;x&lt;/b&gt;" in text
    assert "data-layer='a&#x27;b'" in text


def test_training_dashboard_snapshot_label(trained, monkeypatch):
    install(monkeypatch)
    view = TrainingDashboard(trained)
    progress = view.dashboard.progress
    assert progress.label.value == "360 inputs (snapshot)"
    assert progress.bar.layout.display == "none"
    assert progress.pause_button.layout.display == "none"
