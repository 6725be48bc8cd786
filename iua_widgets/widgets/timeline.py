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
``iua-timeline-dead``       figure of dead % against step
``iua-timeline-inactive``   figure of mean inactive % against step
``iua-timeline-status``     label: snapshots, last step and epoch, snapshot cost
``iua-errors``              error area
==========================  ==============================================
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import bqplot
import ipywidgets as widgets
import numpy as np

from ..torch.snapshots import TimelineCurves
from .controls import ErrorArea, format_threshold, guarded
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


class TimelinePlot:
    """One bqplot figure: a thin line per layer plus the selected layer drawn thick."""

    def __init__(self, y_label: str, css_class: str) -> None:
        self.x_scale = bqplot.LinearScale()
        self.y_scale = bqplot.LinearScale(min=0.0)
        scales = {"x": self.x_scale, "y": self.y_scale}
        self.lines = bqplot.Lines(
            x=np.zeros(0), y=np.zeros(0), scales=scales, display_legend=True, stroke_width=1.5,
            marker="circle", marker_size=12,
        )
        self.selected = bqplot.Lines(
            x=np.zeros(0), y=np.zeros(0), scales=scales, stroke_width=4, marker="circle",
            marker_size=24,
        )
        self.x_axis = bqplot.Axis(scale=self.x_scale, label="step", grid_lines="dashed")
        self.y_axis = bqplot.Axis(
            scale=self.y_scale, side="left", label=y_label, grid_lines="dashed"
        )
        self.figure = bqplot.Figure(
            marks=[self.lines, self.selected], axes=[self.x_axis, self.y_axis],
            fig_margin={"top": 40, "bottom": 50, "left": 60, "right": 20},
            legend_location="top-left", layout=widgets.Layout(width="480px", height="340px"),
            title_style={"font-size": "13px"},
        )
        self.figure.add_class(css_class)

    def draw(self, x: np.ndarray, values: np.ndarray, layers: tuple[str, ...],
             selected: int | None, x_label: str, title: str) -> None:
        """Draw ``values`` (layers, points) against ``x``; ``selected`` is a row or ``None``."""
        colors = [PALETTE[row % len(PALETTE)] for row in range(len(layers))]
        opacities = [1.0 if row == selected else DIM_OPACITY for row in range(len(layers))]
        if selected is None:
            opacities = [1.0] * len(layers)
        with self.figure.hold_sync(), self.lines.hold_sync(), self.selected.hold_sync():
            if len(layers) and len(x):
                self.lines.x = x
                self.lines.y = values
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
        ``"step"`` or ``"epoch"``. Against epoch, each epoch shows its last
        snapshot, and snapshots without an epoch are left out.
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
        self.dead_plot = TimelinePlot("dead units (%)", "iua-timeline-dead")
        self.inactive_plot = TimelinePlot("mean inactive units (%)", "iua-timeline-inactive")
        super().__init__(
            children=[
                widgets.HBox([self.layer_select, widgets.Label("x axis"), self.x_select]),
                self.atol_slider,
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
            self._sync_layer_options(list(self.curves.layers))
            self._draw()

    def _refresh_from_tracker(self) -> None:
        try:
            self.refresh()
        except Exception as error:  # noqa: BLE001 - timer threads must not die silently
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
        keep = _last_of_each_epoch(curves.epochs)
        return (
            curves.epochs[keep], curves.dead_percent[:, keep],
            curves.mean_inactive_percent[:, keep],
        )

    def _draw(self) -> None:
        curves = self.curves
        if curves is None:
            return
        x, dead, inactive = self.plotted()
        layers = curves.layers
        selected = layers.index(self.layer) if self.layer in layers else None
        label = self.x_select.value
        at = f"atol={format_threshold(curves.atol)}"
        self.dead_plot.draw(x, dead, layers, selected, label, f"Dead units, {at}")
        self.inactive_plot.draw(x, inactive, layers, selected, label, f"Mean inactive units, {at}")
        self.status.value = self._status_text()

    def _status_text(self) -> str:
        snapshots = list(self.tracker.snapshots)
        if not snapshots:
            return "No snapshot yet."
        last = snapshots[-1]
        epoch = "" if last.epoch is None else f", epoch {last.epoch}"
        return (
            f"{len(snapshots)} snapshots; last at step {last.step}{epoch}, "
            f"which took {1000 * last.seconds:.0f} ms."
        )

    def _sync_layer_options(self, names: list[str]) -> None:
        if list(self.layer_select.options) == names:
            return
        current = self.layer_select.value
        requested = self._requested_layer if self._requested_layer in names else current
        if requested not in names:
            requested = names[0] if names else None
        self._updating_options = True
        try:
            self.layer_select.options = names
            self.layer_select.value = requested
        finally:
            self._updating_options = False
        if requested is not None and requested == self._requested_layer:
            self._requested_layer = None

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
                       self.errors, self.dead_plot.figure, self.inactive_plot.figure):
            widget.close()
        super().close()


def _last_of_each_epoch(epochs: np.ndarray) -> np.ndarray:
    """Indices of the last snapshot of each epoch, in order; NaN epochs are skipped."""
    known = np.flatnonzero(~np.isnan(epochs))
    if len(known) == 0:
        return known
    values = epochs[known]
    is_last = np.append(values[1:] != values[:-1], True)
    return known[is_last]
