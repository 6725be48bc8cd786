"""Heatmaps of each unit's inactive proportion: bqplot canvas ``HeatMap`` on a fixed 0-1 scale.

:func:`heatmap_panel` is what ``IUA.show(..., vis_type=IUA.VisType.CHART)``
returns; :class:`UnitHeatmap` is the single-layer view the dashboard reuses.
The grid layout and its downsampling rule come from :mod:`.heatmap_grid`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import anywidget
import bqplot
import ipywidgets as widgets
import numpy as np
import traitlets

from ..engine import Result
from .heatmap_grid import (
    COLORS,
    MEAN_OVER_CHANNELS,
    PADDING_COLOR,
    HeatmapGrid,
    channel_count,
    channel_label,
    heatmap_grid,
)

logger = logging.getLogger(__name__)

_HERE = Path(__file__).parent


class HeatmapProbe(anywidget.AnyWidget):
    """Label that names the unit under the mouse in the enclosing heatmap view.

    The browser sets ``hover_cell`` to ``[row, col]`` (``[]`` outside the
    grid), and Python writes the unit's description into ``text``.
    """

    _esm = _HERE / "heatmap_probe.js"

    rows = traitlets.Int(1).tag(sync=True)
    cols = traitlets.Int(1).tag(sync=True)
    hover_cell = traitlets.List(traitlets.Int()).tag(sync=True)
    text = traitlets.Unicode("").tag(sync=True)


def cell_positions(cells: int, block: int) -> np.ndarray:
    """Centres of ``cells`` cells of ``block`` units each, in unit coordinates.

    bqplot's ``HeatMap`` sizes cells from the distance between neighbouring
    centres, so it needs two of them: a single cell is drawn as two halves at
    ``centre -+ block / 4``, which together cover exactly one cell.
    """
    centres = np.arange(cells, dtype=np.float64) * block + (block - 1) / 2
    if cells == 1:
        return np.array([centres[0] - block / 4, centres[0] + block / 4])
    return centres


def axis_ticks(extent: int) -> np.ndarray:
    """Whole-number ticks ``0, step, 2 * step, ...`` below ``extent``, at most 8, step 1-2-5."""
    step = 1
    while extent / step > 8:
        for factor in (2, 2.5, 2):
            step = int(step * factor)
            if extent / step <= 8:
                break
    return np.arange(0, extent, step, dtype=np.float64)


def scale_limits(positions: np.ndarray) -> tuple[float, float]:
    """Return the outer cell edges, so the heatmap fills the plot area and does not overflow it."""
    half = (positions[1] - positions[0]) / 2
    return float(positions[0] - half), float(positions[-1] + half)


def mark_color(values: np.ndarray) -> np.ndarray:
    """Return the ``color`` array sent to bqplot: float32, single rows or columns doubled."""
    color = np.ascontiguousarray(values, dtype=np.float32)
    if color.shape[0] == 1:
        color = np.repeat(color, 2, axis=0)
    if color.shape[1] == 1:
        color = np.repeat(color, 2, axis=1)
    return color


def units_text(shape: tuple[int, ...]) -> str:
    """Describe a unit shape: ``64x32x32 units``, ``1,000,000 units``, ``1 unit`` (1-D response)."""
    if not shape:
        return "1 unit"
    return "x".join(f"{s:,}" for s in shape) + " units"


def spatial_axis_labels(unit_shape: tuple[int, ...]) -> tuple[str, str]:
    """Return the (x, y) axis labels of a ``"grid"`` layout, naming axes of the response array.

    The response's axis 0 is the input axis. Unit shapes of three or more
    axes are read as channels first (NCHW), so the last two are H and W.
    """
    rank = len(unit_shape)
    if rank >= 3:
        return f"W (response axis {rank})", f"H (response axis {rank - 1})"
    return f"response axis {rank}", f"response axis {rank - 1}"


def padding_positions(grid: HeatmapGrid) -> tuple[np.ndarray, np.ndarray]:
    """Return the x and y centres of the padding cells, as :func:`cell_positions` gives them."""
    rows, cols = grid.values.shape
    x = cell_positions(grid.padding, 1) + (cols - grid.padding)
    y = cell_positions(1, 1) + (rows - 1)
    return x, y


class UnitHeatmap(widgets.VBox):
    """Heatmap of one layer's per-unit inactive proportion with a colour legend.

    Conv layers (three or more unit axes) get a channel selector whose first
    choice is the spatial map averaged over channels. Hovering a cell names
    its unit(s) in the layer's own shape.
    """

    def __init__(self, name: str = "", result: Result | None = None, **kwargs) -> None:
        self.color_scale = bqplot.ColorScale(min=0.0, max=1.0, colors=list(COLORS))
        self.x_scale = bqplot.LinearScale()
        self.y_scale = bqplot.LinearScale(reverse=True)
        self.mark = bqplot.HeatMap(
            x=np.array([0.0, 1.0]),
            y=np.array([0.0, 1.0]),
            color=np.zeros((2, 2), dtype=np.float32),
            scales={"x": self.x_scale, "y": self.y_scale, "color": self.color_scale},
        )
        # bqplot 0.13.1's HeatMap paints null_color only for null, which a binary
        # float32 array cannot hold, and a NaN cell keeps the previous cell's
        # fill. So padding cells get a second HeatMap on top, in grey, which
        # is in the figure only while the layout has padding.
        self.padding_scale = bqplot.ColorScale(min=0.0, max=1.0, colors=[PADDING_COLOR] * 2)
        self.padding_mark = bqplot.HeatMap(
            x=np.array([0.0, 1.0]),
            y=np.array([0.0, 1.0]),
            color=np.zeros((2, 2), dtype=np.float32),
            scales={"x": self.x_scale, "y": self.y_scale, "color": self.padding_scale},
        )
        self.color_axis = bqplot.ColorAxis(
            scale=self.color_scale, side="right", tick_format=".1f",
        )
        self.x_axis = bqplot.Axis(
            scale=self.x_scale, label="unit column", grid_lines="none", tick_format="d"
        )
        self.y_axis = bqplot.Axis(
            scale=self.y_scale, side="left", label="unit row", grid_lines="none", tick_format="d"
        )
        # The toolbar would cover the title, and with it the downsampling rule, on hover.
        self.figure = bqplot.Figure(
            marks=[self.mark],
            axes=[self.x_axis, self.y_axis, self.color_axis],
            title="",
            fig_margin={"top": 50, "bottom": 50, "left": 60, "right": 100},
            layout=widgets.Layout(width="620px", height="500px"),
            title_style={"font-size": "12px"},
            display_toolbar=False,
        )
        self.figure.add_class("iua-heatmap")
        self.channel_select = widgets.Dropdown(
            description="channel", options=[("mean over channels", MEAN_OVER_CHANNELS)]
        )
        self.channel_select.add_class("iua-channel-select")
        self.channel_select.layout.display = "none"
        self.probe = HeatmapProbe()
        self.probe.add_class("iua-heatmap-hover")
        kwargs.setdefault("layout", widgets.Layout(flex="0 0 auto"))
        super().__init__(children=[self.channel_select, self.figure, self.probe], **kwargs)
        self.add_class("iua-heatmap-view")
        self.name = name
        self.result: Result | None = None
        self.grid: HeatmapGrid | None = None
        self.channel_select.observe(self._on_channel, names="value")
        self.probe.observe(self._on_hover, names="hover_cell")
        if result is not None:
            self.show(name, result)

    def show(self, name: str, result: Result) -> None:
        """Draw ``result.unit_inactive_proportion`` of layer ``name``."""
        if result.unit_shape != getattr(self.result, "unit_shape", None):
            self._reset_channels(result.unit_shape)
        self.name = name
        self.result = result
        self._draw()

    def _reset_channels(self, unit_shape: tuple[int, ...]) -> None:
        channels = channel_count(unit_shape)
        options = [("mean over channels", MEAN_OVER_CHANNELS)]
        leading = unit_shape[:-2]
        for channel in range(channels):
            options.append((channel_label(channel, leading), channel))
        with self.channel_select.hold_trait_notifications():
            self.channel_select.options = options
            self.channel_select.value = MEAN_OVER_CHANNELS
        self.channel_select.layout.display = None if channels else "none"

    def _draw(self) -> None:
        result = self.result
        if result is None:
            return
        channel = self.channel_select.value if channel_count(result.unit_shape) else None
        grid = heatmap_grid(result.unit_inactive_proportion, channel=channel)
        self.grid = grid
        rows, cols = grid.values.shape
        spatial = grid.kind == "grid"
        title = f"{self.name} · {units_text(result.unit_shape)} · {grid.rule}"
        if result.inputs == 0:
            title += " · no inputs yet, drawn as 0"
        x_label, y_label = spatial_axis_labels(result.unit_shape) if spatial else (
            "cell column", "cell row"
        )
        with (
            self.mark.hold_sync(), self.padding_mark.hold_sync(), self.x_scale.hold_sync(),
            self.y_scale.hold_sync(), self.figure.hold_sync(), self.probe.hold_sync(),
        ):
            x = cell_positions(cols, grid.block if spatial else 1)
            y = cell_positions(rows, grid.block if spatial else 1)
            self.mark.x, self.mark.y = x, y
            self.x_scale.min, self.x_scale.max = scale_limits(x)
            self.y_scale.min, self.y_scale.max = scale_limits(y)
            block = grid.block if spatial else 1
            self.x_axis.tick_values = axis_ticks(cols * block)
            self.y_axis.tick_values = axis_ticks(rows * block)
            self.mark.color = mark_color(grid.values)
            self._draw_padding(grid)
            self.figure.title = title
            self.x_axis.label = x_label
            self.y_axis.label = y_label
            self.probe.rows, self.probe.cols = rows, cols
            self._update_hover_text()

    def _draw_padding(self, grid: HeatmapGrid) -> None:
        if not grid.padding:
            self.figure.marks = [self.mark]
            return
        x, y = padding_positions(grid)
        self.padding_mark.x, self.padding_mark.y = x, y
        self.padding_mark.color = np.zeros((len(y), len(x)), dtype=np.float32)
        self.figure.marks = [self.mark, self.padding_mark]

    def _on_channel(self, change: dict) -> None:
        self._draw()

    def _on_hover(self, change: dict) -> None:
        self._update_hover_text()

    def _update_hover_text(self) -> None:
        cell = self.probe.hover_cell
        if self.grid is None or len(cell) != 2:
            self.probe.text = (
                "Colour: share of inputs on which the unit is inactive (0 to 1). "
                "Hover over a cell to name its unit."
            )
            return
        self.probe.text = self.grid.describe_cell(cell[0], cell[1])


def heatmap_panel(results: Mapping[str, Result]) -> widgets.Widget:
    """Return one heatmap per response, each on a fixed 0-1 scale with a colour legend.

    Each figure shows ``unit_inactive_proportion`` of one response; the title
    names the response, its unit shape and the downsampling rule. Works for
    1-D, dense and conv responses of any size (at most 256 x 256 cells).
    """
    if not results:
        note = widgets.HTML("No responses to show.")
        panel = widgets.VBox([note])
    else:
        panel = widgets.VBox([UnitHeatmap(name, result) for name, result in results.items()])
    panel.add_class("iua-heatmap-panel")
    return panel
