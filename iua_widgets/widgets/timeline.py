"""Live timeline of dead and mean inactive units per layer while a model trains.

:class:`TrainingTimeline` observes a
:class:`~iua_widgets.torch.tracking.TrainingTracker` and plots, for every
tracked layer, the dead-unit percentage and the mean inactive percentage
against the training step (or epoch). Moving its atol slider recomputes the
whole timeline from the tracker's cached snapshots; no model runs.

Stable CSS classes (browser tests rely on them):

==========================  ==============================================
``iua-timeline``            root box
``iua-timeline-layer``      layer selector (Dropdown); the layer is drawn thick
``iua-timeline-atol``       atol ``SelectionSlider`` over the tracker's grid
``iua-timeline-x``          x axis choice: step or epoch (ToggleButtons)
``iua-timeline-legend``     layer colours, above both figures; the selected layer in bold
``iua-timeline-dead``       figure of dead % against step
``iua-timeline-inactive``   figure of mean inactive % against step
``iua-timeline-status``     label: snapshots, last step and epoch, snapshot cost
``iua-errors``              error area
==========================  ==============================================
"""

from __future__ import annotations

import html
import logging
import math
import threading
from typing import Any

import bqplot
import ipywidgets as widgets
import numpy as np

from ..torch.snapshots import TimelineCurves
from .controls import ErrorArea, format_threshold, guarded, sync_layer_options
from .streaming import Throttle

logger = logging.getLogger(__name__)

#: Line colours, one per layer in order, repeating after ten layers.
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)
#: Opacity of the layers that are not selected.
DIM_OPACITY = 0.35
X_CHOICES = ("step", "epoch")
#: x axis labels, by x choice.
X_LABELS = {"step": "step", "epoch": "epochs completed (0 = before training)"}
#: Maximum number of x ticks.
MAX_TICKS = 8
#: Space left on each side of the points, as a fraction of their x range.
X_PADDING = 0.04


def integer_ticks(low: float, high: float, max_ticks: int = MAX_TICKS) -> np.ndarray:
    """Return whole-number ticks from ``low`` to ``high`` at a 1-2-5 step, at most ``max_ticks``."""
    decade = 1
    while True:
        for factor in (1, 2, 5):
            step = factor * decade
            if (high - low) / step < max_ticks:
                first = math.ceil(low / step) * step
                return np.arange(first, math.floor(high) + 1, step, dtype=np.float64)
        decade *= 10


def x_limits(x: np.ndarray) -> tuple[float, float]:
    """Return the x scale limits: the points' range widened so end markers and ticks fit."""
    low, high = float(np.min(x)), float(np.max(x))
    pad = max(X_PADDING * (high - low), 0.5)
    return low - pad, high + pad


def epoch_points(steps: np.ndarray, epochs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the snapshots drawn against epochs, as indices, and their x positions.

    A snapshot at step 0 shows the model before training, at x = 0. Of the
    other snapshots, the last one taken during epoch ``e`` (counted from 0,
    as ``for epoch in range(epochs)`` does) is drawn at ``e + 1``, the
    number of epochs completed. Snapshots without an epoch are left out.
    """
    # NOTE: when the snapshot period does not divide the steps of an epoch,
    # the last snapshot of an epoch comes before its end, yet is drawn at it.
    before = np.flatnonzero(steps == 0)[-1:]
    trained = np.flatnonzero(steps != 0)
    last = trained[_last_of_each_epoch(epochs[trained])]
    indices = np.concatenate([before, last])
    x = np.concatenate([np.zeros(len(before)), epochs[last] + 1.0])
    return indices, x


class TimelinePlot:
    """One bqplot figure: a thin line per layer plus the selected layer drawn thick."""

    def __init__(self, y_label: str, css_class: str) -> None:
        self.x_scale = bqplot.LinearScale()
        self.y_scale = bqplot.LinearScale(min=0.0)
        scales = {"x": self.x_scale, "y": self.y_scale}
        self.lines = bqplot.Lines(
            x=np.zeros(0), y=np.zeros(0), scales=scales, stroke_width=1.5,
            marker="circle", marker_size=12,
        )
        self.selected = bqplot.Lines(
            x=np.zeros(0), y=np.zeros(0), scales=scales, stroke_width=4, marker="circle",
            marker_size=24,
        )
        self.x_axis = bqplot.Axis(
            scale=self.x_scale, label="step", grid_lines="dashed", tick_format="d"
        )
        self.y_axis = bqplot.Axis(
            scale=self.y_scale, side="left", label=y_label, grid_lines="dashed"
        )
        # The legend is an HTML row above the figures (TrainingTimeline.legend):
        # bqplot draws its legend inside the plot area, over the lines. The
        # toolbar is hidden because it would cover the title on hover.
        self.figure = bqplot.Figure(
            marks=[self.lines, self.selected], axes=[self.x_axis, self.y_axis],
            fig_margin={"top": 40, "bottom": 50, "left": 60, "right": 30},
            layout=widgets.Layout(width="480px", height="340px"),
            title_style={"font-size": "13px"}, display_toolbar=False,
        )
        self.figure.add_class(css_class)

    def draw(self, x: np.ndarray, values: np.ndarray, layers: tuple[str, ...],
             selected: int | None, x_label: str, title: str) -> None:
        """Draw ``values`` (layers, points) against ``x``; ``selected`` is a row or ``None``."""
        colors = [PALETTE[row % len(PALETTE)] for row in range(len(layers))]
        opacities = [1.0 if row == selected else DIM_OPACITY for row in range(len(layers))]
        if selected is None:
            opacities = [1.0] * len(layers)
        with (
            self.figure.hold_sync(), self.lines.hold_sync(), self.selected.hold_sync(),
            self.x_scale.hold_sync(), self.x_axis.hold_sync(),
        ):
            if len(layers) and len(x):
                self.lines.x = x
                self.lines.y = values
                # Ticks stop at the last point, and the axis runs a little
                # further, so the last tick label does not reach the axis end.
                self.x_scale.min, self.x_scale.max = x_limits(x)
                self.x_axis.tick_values = integer_ticks(float(np.min(x)), float(np.max(x)))
            else:
                self.lines.x, self.lines.y = np.zeros(0), np.zeros(0)
            self.lines.labels = list(layers)
            self.lines.colors = colors
            self.lines.opacities = opacities
            if selected is not None and len(x):
                self.selected.x = x
                self.selected.y = values[selected]
                self.selected.colors = [colors[selected]]
            else:
                self.selected.x, self.selected.y = np.zeros(0), np.zeros(0)
            self.x_axis.label = x_label
            self.figure.title = title


class TrainingTimeline(widgets.VBox):
    """Dead % and mean inactive % of every tracked layer against step or epoch; live.

    Parameters
    ----------
    tracker
        A :class:`~iua_widgets.torch.tracking.TrainingTracker` (or any object
        with ``grid``, ``atol``, ``curves(atol)``, ``snapshots``, ``observe``
        and ``unobserve``).
    layer
        Layer highlighted first; the first tracked layer when ``None``.
    atol
        Starting grid threshold; the tracker's ``atol`` when ``None``.
    x
        ``"step"`` or ``"epoch"``. Against epoch, the x axis counts epochs
        completed: the snapshot at step 0 is at 0, and the last snapshot of
        each epoch at the epoch's number plus one (see :func:`epoch_points`).
    redraw_interval
        Minimum seconds between redraws caused by new snapshots (0.1: about 10 Hz).
    """

    def __init__(
        self,
        tracker: Any,
        *,
        layer: str | None = None,
        atol: float | None = None,
        x: str = "step",
        redraw_interval: float = 0.1,
    ) -> None:
        if x not in X_CHOICES:
            raise ValueError(f"x must be one of {X_CHOICES}, got {x!r}.")
        self.tracker = tracker
        grid = np.asarray(tracker.grid, dtype=np.float64)
        start = tracker.atol if atol is None else float(grid[tracker.threshold_index(atol)])
        self._lock = threading.RLock()
        self._requested_layer = layer
        self._updating_options = False
        self.curves: TimelineCurves | None = None

        self.errors = ErrorArea()
        self.layer_select = widgets.Dropdown(options=[], description="layer")
        self.layer_select.add_class("iua-timeline-layer")
        self.atol_slider = widgets.SelectionSlider(
            options=[(format_threshold(v), float(v)) for v in grid], value=float(start),
            description="atol", continuous_update=True, layout=widgets.Layout(width="420px"),
        )
        self.atol_slider.add_class("iua-timeline-atol")
        # A Label, not a description: ToggleButtons wraps its buttons below a description.
        self.x_select = widgets.ToggleButtons(options=list(X_CHOICES), value=x)
        self.x_select.style.button_width = "70px"
        self.x_select.add_class("iua-timeline-x")
        self.status = widgets.Label("No snapshot yet.")
        self.status.add_class("iua-timeline-status")
        self.legend = widgets.HTML("")
        self.legend.add_class("iua-timeline-legend")
        self.dead_plot = TimelinePlot("dead units (%)", "iua-timeline-dead")
        self.inactive_plot = TimelinePlot("mean inactive units (%)", "iua-timeline-inactive")
        super().__init__(
            children=[
                widgets.HBox([self.layer_select, widgets.Label("x axis"), self.x_select]),
                self.atol_slider,
                self.legend,
                widgets.HBox([self.dead_plot.figure, self.inactive_plot.figure]),
                self.status,
                self.errors,
            ]
        )
        self.add_class("iua-timeline")

        self.throttle = Throttle(self._refresh_from_tracker, redraw_interval)
        self._observer = guarded(self.errors, "Timeline update", self._on_snapshot)
        self.layer_select.observe(
            guarded(self.errors, "Layer selection", self._on_layer), names="value"
        )
        self.atol_slider.observe(
            guarded(self.errors, "Threshold change", self._on_redraw), names="value"
        )
        self.x_select.observe(guarded(self.errors, "x axis change", self._on_redraw), names="value")
        tracker.observe(self._observer)
        self.refresh()

    # -- public state ------------------------------------------------------

    @property
    def atol(self) -> float:
        """Current grid threshold; setting an off-grid value raises ``ValueError``."""
        return float(self.atol_slider.value)

    @atol.setter
    def atol(self, value: float) -> None:
        self.atol_slider.value = float(self.tracker.grid[self.tracker.threshold_index(value)])

    @property
    def layer(self) -> str | None:
        """Highlighted layer name."""
        return self.layer_select.value

    @layer.setter
    def layer(self, name: str) -> None:
        if name not in self.layer_select.options:
            raise ValueError(
                f"No tracked layer named {name!r}; known layers: {list(self.layer_select.options)}."
            )
        self.layer_select.value = name

    # -- drawing -------------------------------------------------------------

    def refresh(self) -> None:
        """Recompute the curves at the current atol from the tracker's snapshots and redraw."""
        with self._lock:
            self.curves = self.tracker.curves(self.atol)
            sync_layer_options(self, list(self.curves.layers))
            self._draw()

    def _refresh_from_tracker(self) -> None:
        try:
            self.refresh()
        except Exception as error:
            logger.exception("Timeline redraw failed")
            self.errors.report(f"Timeline redraw failed: {type(error).__name__}: {error}")

    def plotted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return the points drawn now: ``x``, dead % and mean inactive % (layers, points)."""
        curves = self.curves
        if curves is None:
            empty = np.zeros((0, 0))
            return np.zeros(0), empty, empty
        if self.x_select.value == "step":
            return curves.steps.astype(np.float64), curves.dead_percent, curves.mean_inactive_percent
        keep, x = epoch_points(curves.steps, curves.epochs)
        return x, curves.dead_percent[:, keep], curves.mean_inactive_percent[:, keep]

    def _draw(self) -> None:
        curves = self.curves
        if curves is None:
            return
        x, dead, inactive = self.plotted()
        layers = curves.layers
        selected = layers.index(self.layer) if self.layer in layers else None
        label = X_LABELS[self.x_select.value]
        at = f"atol={format_threshold(curves.atol)}"
        self.dead_plot.draw(x, dead, layers, selected, label, f"Dead units, {at}")
        self.inactive_plot.draw(x, inactive, layers, selected, label, f"Mean inactive units, {at}")
        self.legend.value = legend_html(layers, selected)
        self.status.value = self._status_text()

    def _status_text(self) -> str:
        snapshots = list(self.tracker.snapshots)
        if not snapshots:
            return "No snapshot yet."
        last = snapshots[-1]
        epoch = "" if last.epoch is None else f", during epoch {last.epoch} (counted from 0)"
        return (
            f"{len(snapshots)} snapshots; last at step {last.step}{epoch}, "
            f"which took {1000 * last.seconds:.0f} ms."
        )

    # -- observers -------------------------------------------------------------

    def _on_snapshot(self, tracker: Any) -> None:
        self.throttle.request()

    def _on_layer(self, change: dict) -> None:
        if not self._updating_options:
            with self._lock:
                self._draw()

    def _on_redraw(self, change: dict) -> None:
        self.refresh()

    def close(self) -> None:
        """Stop observing the tracker and close the widgets."""
        self.tracker.unobserve(self._observer)
        for widget in (self.layer_select, self.atol_slider, self.x_select, self.status,
                       self.legend, self.errors, self.dead_plot.figure, self.inactive_plot.figure):
            widget.close()
        super().close()


def legend_html(layers: tuple[str, ...], selected: int | None) -> str:
    """Return the legend row: a line swatch in each layer's colour and its name, escaped."""
    entries = []
    for row, name in enumerate(layers):
        color = PALETTE[row % len(PALETTE)]
        chosen = row == selected
        swatch = (
            f"<span style='display: inline-block; width: 22px; height: {4 if chosen else 2}px; "
            f"background: {color}; vertical-align: middle; margin-right: 4px'></span>"
        )
        weight = "bold" if chosen else "normal"
        entries.append(
            f"<span class='iua-timeline-legend-entry' data-layer='{html.escape(name, quote=True)}' "
            f"style='margin-right: 16px; font-weight: {weight}'>{swatch}{html.escape(name)}</span>"
        )
    return "".join(entries)


def _last_of_each_epoch(epochs: np.ndarray) -> np.ndarray:
    """Indices of the last snapshot of each epoch, in order; NaN epochs are skipped."""
    known = np.flatnonzero(~np.isnan(epochs))
    if len(known) == 0:
        return known
    values = epochs[known]
    is_last = np.append(values[1:] != values[:-1], True)
    return known[is_last]
