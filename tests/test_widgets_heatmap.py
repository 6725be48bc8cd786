"""Heatmap layout, downsampling, colour map, PNG writer and the CHART panel, without a browser."""

from __future__ import annotations

import math

import bqplot
import numpy as np
import pytest

from iua_widgets import IUA, StreamingIUA
from iua_widgets.engine import Result
from iua_widgets.widgets.heatmap import (
    UnitHeatmap,
    cell_positions,
    heatmap_panel,
    mark_color,
    scale_limits,
)
from iua_widgets.widgets.heatmap_grid import (
    COLORS,
    MAX_SIDE,
    MEAN_OVER_CHANNELS,
    PADDING_COLOR,
    ROW_UNITS,
    grid_rgb,
    heatmap_grid,
    to_rgb,
)
from iua_widgets.widgets.png import MAX_PNG_SIZE, png_bytes, read_png, upscale

from .widget_recorder import install


def loop_block_mean(plane: np.ndarray, block: int) -> np.ndarray:
    """Block means by explicit loops over tiles, independent of the reshape trick."""
    height, width = plane.shape
    rows, cols = math.ceil(height / block), math.ceil(width / block)
    out = np.empty((rows, cols))
    for r in range(rows):
        for c in range(cols):
            out[r, c] = plane[r * block : (r + 1) * block, c * block : (c + 1) * block].mean()
    return out


def loop_row_width(cells: int) -> int:
    """Row width by search: the narrowest full-row width whose grid is at most twice as wide as high."""
    if cells <= ROW_UNITS:
        return cells
    for width in range(1, MAX_SIDE + 1):
        rows = cells // width
        if cells % width == 0 and rows <= width <= 2 * rows:
            return width
    return math.ceil(math.sqrt(cells))


def loop_flat_grid(flat: np.ndarray) -> np.ndarray:
    """The flat rule written out: runs of k units, full rows when possible, zero padding."""
    units = flat.size
    k = max(1, math.ceil(units / MAX_SIDE**2))
    cells = [flat[i : i + k].mean() for i in range(0, units, k)]
    width = loop_row_width(len(cells))
    rows = math.ceil(len(cells) / width)
    padded = cells + [0.0] * (rows * width - len(cells))
    return np.array(padded).reshape(rows, width)


@pytest.mark.parametrize("shape", [(), (1,), (7,), (33,), (1000,), (70_000,)])
def test_flat_layout_matches_rule(shape):
    rng = np.random.default_rng(1)
    proportion = rng.random(shape)
    grid = heatmap_grid(proportion)
    want = loop_flat_grid(proportion.reshape(-1))
    assert grid.values.dtype == np.float32
    np.testing.assert_allclose(grid.values, want.astype(np.float32), rtol=1e-6)
    assert max(grid.values.shape) <= MAX_SIDE


@pytest.mark.parametrize("shape", [(3, 4), (300, 5), (513, 1000)])
def test_spatial_layout_matches_rule(shape):
    rng = np.random.default_rng(2)
    proportion = rng.random(shape)
    grid = heatmap_grid(proportion)
    block = max(1, math.ceil(max(shape) / MAX_SIDE))
    np.testing.assert_allclose(grid.values, loop_block_mean(proportion, block), rtol=1e-6)
    assert max(grid.values.shape) <= MAX_SIDE
    if block > 1:
        assert f"mean of {block}x{block} blocks" in grid.rule


def test_conv_channel_and_mean_views():
    rng = np.random.default_rng(3)
    proportion = rng.random((4, 5, 6))
    mean = heatmap_grid(proportion, channel=MEAN_OVER_CHANNELS)
    np.testing.assert_allclose(mean.values, proportion.mean(axis=0), rtol=1e-6)
    assert "mean over 4 channels" in mean.rule
    second = heatmap_grid(proportion, channel=2)
    np.testing.assert_allclose(second.values, proportion[2], rtol=1e-6)
    with pytest.raises(ValueError, match="Channel 4 does not exist"):
        heatmap_grid(proportion, channel=4)


def test_million_unit_layer_is_downsampled():
    proportion = np.random.default_rng(4).random(1_000_000)
    grid = heatmap_grid(proportion)
    assert grid.values.shape[0] <= MAX_SIDE
    assert grid.values.shape[1] <= MAX_SIDE
    assert "mean of 16 consecutive units per cell" in grid.rule
    np.testing.assert_allclose(grid.values, loop_flat_grid(proportion), rtol=1e-6)
    square = heatmap_grid(proportion.reshape(1000, 1000))
    assert square.values.shape == (250, 250)
    np.testing.assert_allclose(square.values, loop_block_mean(proportion.reshape(1000, 1000), 4), rtol=1e-6)


def test_nan_becomes_zero():
    grid = heatmap_grid(np.full((3, 3), np.nan))
    assert not np.isnan(grid.values).any()
    np.testing.assert_array_equal(grid.values, np.zeros((3, 3), dtype=np.float32))


def test_hover_names_unit_in_layer_shape():
    proportion = np.zeros((2, 3, 4))
    proportion[1, 2, 3] = 0.25
    single = heatmap_grid(proportion, channel=1)
    assert single.describe_cell(2, 3) == "unit (1, 2, 3): inactive proportion 0.25"
    mean = heatmap_grid(proportion, channel=MEAN_OVER_CHANNELS)
    assert mean.describe_cell(2, 3).startswith("units (:, 2, 3): mean")
    assert mean.describe_cell(5, 0) == ""
    nested = heatmap_grid(np.zeros((2, 3, 4, 5)), channel=4)
    assert nested.describe_cell(0, 0).startswith("unit (1, 1, 0, 0)")
    flat = heatmap_grid(np.arange(100) / 100)
    assert flat.describe_cell(0, 5) == "unit (5,): inactive proportion 0.05"
    assert flat.describe_cell(9, 9) == "unit (99,): inactive proportion 0.99"
    assert heatmap_grid(np.array(0.5)).describe_cell(0, 0) == "unit (): inactive proportion 0.5"
    big = heatmap_grid(np.zeros((600, 600)))
    assert big.describe_cell(0, 1).startswith("units (0:3, 3:6)")
    padded = heatmap_grid(np.zeros(47))  # 47 (a prime) cells in rows of 7: two padding cells
    assert padded.describe_cell(6, 4) == "unit (46,): inactive proportion 0"
    assert padded.describe_cell(6, 5) == "padding cell (no unit)"
    assert padded.describe_cell(6, 6) == "padding cell (no unit)"
    assert "2 padding cells in grey" in padded.rule


def test_single_row_is_doubled_for_bqplot():
    color = mark_color(np.array([[0.1, 0.2, 0.3]], dtype=np.float32))
    assert color.shape == (2, 3)
    np.testing.assert_array_equal(color[0], color[1])
    np.testing.assert_allclose(cell_positions(1, 1), [-0.25, 0.25])
    np.testing.assert_allclose(cell_positions(3, 4), [1.5, 5.5, 9.5])


def test_to_rgb_matches_color_stops():
    rgb = to_rgb(np.linspace(0.0, 1.0, len(COLORS)))
    for pixel, color in zip(rgb, COLORS, strict=True):
        assert "#" + "".join(f"{v:02x}" for v in pixel) == color
    middle = to_rgb(np.array([1 / 16]))[0]  # halfway between the first two stops
    np.testing.assert_array_equal(middle, [np.rint((0x44 + 0x47) / 2), np.rint((0x01 + 0x2D) / 2), np.rint((0x54 + 0x7B) / 2)])
    np.testing.assert_array_equal(to_rgb(np.array([-1.0, 2.0])), to_rgb(np.array([0.0, 1.0])))


def test_png_round_trip():
    rgb = to_rgb(np.random.default_rng(5).random((3, 5)))
    big = upscale(rgb, 20)
    assert big.shape == (12, 20, 3)
    decoded = read_png(png_bytes(big))
    np.testing.assert_array_equal(decoded, big)
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(np.zeros((2, 2, 3), dtype=np.float32))


def responses():
    rng = np.random.default_rng(6)
    return {
        "scalar": np.maximum(rng.normal(size=(20,)), 0),
        "dense": np.maximum(rng.normal(size=(20, 10)), 0),
        "conv": np.maximum(rng.normal(size=(20, 3, 5, 6)), 0),
    }


def test_chart_panel_one_figure_per_response(monkeypatch):
    recorder = install(monkeypatch)
    iua = IUA.introspect(responses(), batch_size=8)
    panel = IUA.show(iua, vis_type=IUA.VisType.CHART)
    views = list(panel.children)
    assert [v.name for v in views] == ["conv", "dense", "scalar"]
    for view in views:
        result = iua.results[view.name]
        assert isinstance(view.mark, bqplot.HeatMap)
        assert view.figure.title.startswith(view.name + " · ")
        assert view.color_scale.min == 0.0
        assert view.color_scale.max == 1.0
        assert any(isinstance(axis, bqplot.ColorAxis) for axis in view.figure.axes)
        assert view.mark.color.dtype == np.float32
        assert not np.isnan(view.mark.color).any()
        expected = heatmap_grid(result.unit_inactive_proportion).values
        np.testing.assert_array_equal(view.grid.values, expected)
        np.testing.assert_array_equal(view.mark.color, mark_color(expected))
    # The heatmap colour goes out as a float32 binary buffer, never bool or float16.
    color_states = [
        m.data["state"]["color"] for m in recorder.messages
        if m.msg_type in ("comm_open", "comm_msg") and "color" in m.data.get("state", {})
        and isinstance(m.data["state"]["color"], dict)
    ]
    assert color_states
    assert {state["dtype"] for state in color_states} == {"float32"}


def test_channel_selector_shows_one_channel():
    iua = IUA.introspect(responses(), batch_size=8)
    result = iua.results["conv"]
    view = UnitHeatmap("conv", result)
    assert view.channel_select.layout.display is None
    assert len(view.channel_select.options) == 4
    assert [label for label, _ in view.channel_select.options] == [
        "mean over channels", "channel 0", "channel 1", "channel 2",
    ]
    view.channel_select.value = 2
    np.testing.assert_allclose(
        view.grid.values, result.unit_inactive_proportion[2].astype(np.float32)
    )
    assert "channel 2, 1 unit per cell" in view.figure.title
    view.probe.hover_cell = [1, 2]
    assert view.probe.text.startswith("unit (2, 1, 2): inactive proportion")
    view.probe.hover_cell = []
    assert view.probe.text.startswith("Colour: share of inputs")


def test_layer_without_inputs_draws_zeros():
    engine = StreamingIUA()
    engine.update({"fc": np.zeros((2, 3))})
    result = engine.results["fc"]
    empty = Result(
        mean_inactive=math.nan, std_inactive=math.nan, inactive=None,
        unit_inactive_count=np.zeros(3, dtype=np.int64),
        unit_inactive_proportion=np.full(3, np.nan), units=3, inputs=0, dead_units=0,
        dead_fraction=0.0, mean_inactive_fraction=math.nan, nonfinite=0,
        atol=result.atol, rtol=result.rtol, unit_shape=(3,),
    )
    view = UnitHeatmap("fc", empty)
    assert "no inputs yet" in view.figure.title
    np.testing.assert_array_equal(view.mark.color, np.zeros((2, 3), dtype=np.float32))


def test_empty_panel_has_note():
    panel = heatmap_panel({})
    assert "iua-heatmap-panel" in panel._dom_classes
    assert "No responses" in panel.children[0].value


def test_channel_units_grid_of_channels():
    rng = np.random.default_rng(9)
    conv = np.maximum(rng.normal(size=(12, 40, 3, 3)), 0)
    conv[:, 7] = 0.0  # channel 7 is dead
    engine = StreamingIUA(unit="channel")
    engine.update({"conv": conv})
    result = engine.results["conv"]
    view = UnitHeatmap("conv", result)
    # 40 channels in 5 full rows of 8: 8 divides 40 and lies in [ceil(sqrt(40)), sqrt(80)].
    assert view.grid.values.shape == (5, 8)
    np.testing.assert_allclose(view.grid.values.reshape(-1), result.unit_inactive_proportion)
    assert view.channel_select.layout.display == "none"
    assert view.figure.title == "conv · 40 units · rows of 8, 1 unit per cell"
    assert view.figure.marks == [view.mark]
    view.probe.hover_cell = [0, 7]
    assert view.probe.text == "unit (7,): inactive proportion 1"


@pytest.mark.parametrize("target", [0, -5, 8193, True, 2.5, "512", None])
def test_upscale_rejects_invalid_size(target):
    rgb = np.zeros((3, 2, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="size must be an int from 1 to 8192 pixels"):
        upscale(rgb, target)


def test_upscale_size_limits():
    rgb = np.arange(18, dtype=np.uint8).reshape(3, 2, 3)
    np.testing.assert_array_equal(upscale(rgb, 1), rgb)
    assert upscale(rgb, MAX_PNG_SIZE).shape == (8190, 5460, 3)
    assert upscale(rgb, np.int32(7)).shape == (6, 4, 3)


@pytest.mark.parametrize("cells", [33, 40, 64, 100, 127, 128, 1000, 4099, 65_535, 65_536])
def test_row_width_fills_rows_when_possible(cells):
    grid = heatmap_grid(np.zeros(cells))
    rows, width = grid.values.shape
    assert width == loop_row_width(cells)
    assert grid.padding == rows * width - cells
    has_full_layout = any(
        cells % w == 0 and cells // w <= w <= 2 * (cells // w) for w in range(1, MAX_SIDE + 1)
    )
    assert (grid.padding == 0) == has_full_layout


def test_128_units_have_no_padding():
    # Rows of ceil(sqrt(128)) = 12 would leave 4 padding cells; rows of 16 leave none.
    grid = heatmap_grid(np.ones(128))
    assert grid.values.shape == (8, 16)
    assert grid.padding == 0
    assert "padding" not in grid.rule


def padded_result(units: int, dead: int) -> Result:
    """A dense layer whose first ``dead`` units are inactive on all 4 inputs, the others never."""
    values = np.ones((4, units))
    values[:, :dead] = 0.0
    return IUA.introspect({"fc": values}).results["fc"]


def test_padding_cells_drawn_grey():
    result = padded_result(127, 120)  # 127 is prime: rows of 12, 5 padding cells
    view = UnitHeatmap("fc", result)
    grid = view.grid
    assert grid.values.shape == (11, 12)
    assert grid.padding == 5
    assert view.figure.title == "fc · 127 units · rows of 12, 1 unit per cell, 5 padding cells in grey"

    # The grey mark covers exactly the last five cells of the last row.
    assert view.figure.marks == [view.mark, view.padding_mark]
    assert view.padding_mark.scales["x"] is view.x_scale
    assert view.padding_mark.scales["y"] is view.y_scale
    assert set(view.padding_scale.colors) == {PADDING_COLOR}
    assert scale_limits(np.asarray(view.padding_mark.x)) == (6.5, 11.5)
    assert scale_limits(np.asarray(view.padding_mark.y)) == (9.5, 10.5)
    assert view.padding_mark.color.shape == (2, 5)
    # Padding is not painted as "never inactive" (0) under the grey.
    live = view.grid.values.reshape(-1)[120:127]
    np.testing.assert_array_equal(live, np.zeros(7, dtype=np.float32))

    view.probe.hover_cell = [10, 6]
    assert view.probe.text == "unit (126,): inactive proportion 0"
    view.probe.hover_cell = [10, 7]
    assert view.probe.text == "padding cell (no unit)"

    # The PNG export paints the same cells grey.
    rgb = grid_rgb(grid)
    grey = [int(PADDING_COLOR[i : i + 2], 16) for i in (1, 3, 5)]
    for col in range(12):
        expected = grey if col >= 7 else to_rgb(grid.values[10, col : col + 1])[0].tolist()
        assert rgb[10, col].tolist() == expected, col

    # A layer without padding takes the grey mark out of the figure again.
    view.show("fc", padded_result(128, 0))
    assert view.figure.marks == [view.mark]
    assert "padding" not in view.figure.title


def test_single_padding_cell_positions():
    view = UnitHeatmap("fc", padded_result(47 * 3 + 0, 0))  # 141 = 3 * 47: rows of 12, 3 padding
    assert view.grid.padding == 3
    view = UnitHeatmap("fc", padded_result(143, 0))  # 143 = 11 * 13: full rows of 13
    assert view.grid.padding == 0
    view = UnitHeatmap("fc", padded_result(131, 0))  # prime: rows of 12, 1 padding cell
    assert view.grid.padding == 1
    assert "1 padding cell in grey" in view.figure.title
    assert scale_limits(np.asarray(view.padding_mark.x)) == (10.5, 11.5)
    assert scale_limits(np.asarray(view.padding_mark.y)) == (9.5, 10.5)


def test_conv_axes_named_and_toolbar_hidden():
    iua = IUA.introspect(responses(), batch_size=8)
    conv = UnitHeatmap("conv", iua.results["conv"])
    assert conv.x_axis.label == "W (response axis 3)"
    assert conv.y_axis.label == "H (response axis 2)"
    plane = UnitHeatmap("plane", IUA.introspect({"plane": np.ones((2, 3, 4))}).results["plane"])
    assert plane.x_axis.label == "response axis 2"
    assert plane.y_axis.label == "response axis 1"
    dense = UnitHeatmap("dense", iua.results["dense"])
    assert dense.x_axis.label == "cell column"
    # bqplot's toolbar would cover the title, which states the downsampling rule.
    assert conv.figure.display_toolbar is False
