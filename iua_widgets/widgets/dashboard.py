"""The live IUA dashboard: linked layer table, threshold controls, heatmap and unit drill-down.

The dashboard observes a :class:`~iua_widgets.StreamingIUA` and never
computes statistics itself: every number comes from ``engine.results_at``
at the current ``atol``, which reads the threshold cache only.

Stable CSS classes (browser tests rely on them):

=====================================  ==========================================================
``iua-dashboard``                      root box
``iua-layer-select``                   layer selector (Dropdown)
``iua-atol``                           atol ``SelectionSlider`` over the engine's grid
``iua-atol-text``                      atol text box beside it: type a value, Enter, snaps to grid
``iua-atol-note``                      note on snapped or invalid typed values
``iua-rtol``                           rtol box; ``iua-rtol-note`` marks it as having no effect
                                       and shows an invalid rtol's error
``iua-layer-table``                    layer table; ``th[data-column="<key>"]``,
                                       ``tr[data-row="<layer name>"]``, ``td[data-column="<key>"]``,
                                       rows with class ``selected`` and ``flagged``
``iua-alert-note``                     caption under the layer table: what a flagged (red) row means
``iua-heatmap``                        heatmap figure (title contains the layer name)
``iua-heatmap-view``                   box holding the heatmap and its controls
``iua-channel-select``                 channel selector of conv layers
``iua-heatmap-hover``                  label naming the unit under the mouse
``iua-progress``                       progress bar; ``iua-progress-label`` ("2,048 / 2,048 inputs",
                                       or "1,797 inputs (loaded)" before any stream)
``iua-pause``, ``iua-resume``,         stream buttons; they and the bar are hidden until
``iua-cancel``                         ``stream()`` is called
``iua-errors``                         error area
``iua-unit-table``                     unit table (same DOM contract as the layer table)
``iua-unit-histogram``                 histogram figure of unit activity
=====================================  ==========================================================

Layer table column keys: ``layer``, ``units``, ``inputs``, ``mean_inactive``,
``std_inactive``, ``mean_inactive_pct``, ``dead_units``, ``dead_pct``,
``nonfinite``. Unit table column keys: ``unit``, ``inactive``,
``proportion``, ``dead``.

What the view shows (layer, thresholds, alert, sort, heatmap channel) is a
JSON-serialisable dict, :meth:`Dashboard.view_state`; its keys are listed in
:mod:`.view_state`. :meth:`Dashboard.save` writes it next to the analysis
file, and :meth:`Dashboard.load` restores both.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd

from ..engine import Result, StreamingIUA
from ..engine.state import engine_of
from .controls import (
    ErrorArea,
    ProgressControls,
    ThresholdControls,
    check_real,
    guarded,
    sync_layer_options,
)
from .dashboard_state import (
    ViewStateMixin,
    check_channel,
    check_layer,
    grid_atol,
)
from .dashboard_stream import StreamingMixin
from .drilldown import UnitDrilldown
from .heatmap import UnitHeatmap
from .heatmap_grid import channel_count, grid_rgb
from .layer_table import (
    FRAME_NAMES,
    LAYER_COLUMNS,
    layer_rows,
    rows_frame,
    write_table_csv,
)
from .png import upscale, write_png
from .streaming import StreamHandle, Throttle
from .table import SortableTable
from .view_state import check_fraction, check_view_state

__all__ = ["FRAME_NAMES", "LAYER_COLUMNS", "Dashboard"]

logger = logging.getLogger(__name__)

#: Widgets the dashboard owns and closes, by attribute name.
_PARTS = (
    "layer_select", "thresholds", "progress", "table", "alert_note", "heatmap", "drilldown",
    "errors",
)
#: Colour of flagged rows in ``table.css``, repeated in the caption that explains them.
FLAGGED_COLOR = "#c62828"


def alert_note(dead_alert: float) -> str:
    """Return the HTML caption that says when a layer row is flagged (drawn red)."""
    return (
        f"<span style='color: var(--jp-error-color1, {FLAGGED_COLOR})'>red</span>: "
        f"≥ {100 * dead_alert:g} % dead units or NaN/inf values"
    )


class Dashboard(ViewStateMixin, StreamingMixin, widgets.VBox):
    """Live, linked view of an IUA engine, shown as a cell's last expression or by display().

    Parameters
    ----------
    source
        A :class:`~iua_widgets.StreamingIUA` or an :class:`~iua_widgets.IUA`.
    layer
        Layer selected first; the first layer to arrive when ``None``. A name
        the engine does not have raises ``ValueError``, unless the engine has
        no layers yet: then the layer is selected when it arrives.
    atol
        Starting grid threshold; the engine's starting ``atol`` when ``None``.
        An ``atol`` off the grid raises ``ValueError`` naming its neighbours.
    rtol
        rtol shown and passed to the engine (it has no effect on the counts);
        the engine's when ``None``.
    dead_alert
        Fraction of dead units (0 to 1) at or above which a layer is flagged.
    sort_column, sort_ascending
        Layer table column key the rows are sorted by, and the direction.
    heatmap_mode, heatmap_channel
        ``"mean"`` shows conv layers averaged over channels; ``"channel"``
        with a channel index shows that channel.
    redraw_interval
        Minimum seconds between redraws caused by arriving batches (0.1: about 10 Hz).

    ``Dashboard(source, **other.view_state())`` shows what ``other`` shows.

    Attributes
    ----------
    source_label
        How the inputs arrived, shown after the count until :meth:`stream` is
        called: ``"analysed"`` for an ``IUA``, ``"loaded"`` after :meth:`load`,
        ``"snapshot"`` in a ``TrainingDashboard``, empty for a ``StreamingIUA``.
    """

    def __init__(
        self,
        source: Any,
        *,
        layer: str | None = None,
        atol: float | None = None,
        rtol: float | None = None,
        dead_alert: float = 0.10,
        sort_column: str = "layer",
        sort_ascending: bool = True,
        heatmap_mode: str = "mean",
        heatmap_channel: int | None = None,
        redraw_interval: float = 0.1,
    ) -> None:
        # Check every argument before any widget exists.
        engine = engine_of(source)
        view = check_view_state(
            {
                "layer": layer, "atol": atol, "rtol": rtol, "dead_alert": dead_alert,
                "sort_column": sort_column, "sort_ascending": sort_ascending,
                "heatmap_mode": heatmap_mode, "heatmap_channel": heatmap_channel,
            }
        )
        start = engine.atol if view["atol"] is None else grid_atol(engine, view["atol"])
        check_layer(engine, view["layer"])
        if view["heatmap_mode"] == "channel":
            check_channel(engine, view["layer"], view["heatmap_channel"])
        redraw_interval = check_real("redraw_interval", redraw_interval)
        if not redraw_interval >= 0:
            raise ValueError(f"redraw_interval must be >= 0 seconds, got {redraw_interval!r}.")

        self.engine = engine
        if getattr(engine, "loaded_from", None) is not None:
            self._source_label = "loaded"
        else:
            self._source_label = "" if source is engine else "analysed"
        self._dead_alert = view["dead_alert"]
        self._lock = threading.RLock()
        self._results_key: tuple | None = None
        self._results: dict[str, Result] = {}
        self._updating_options = False
        self._deferring_refresh = False
        self._requested_layer = view["layer"]
        self._requested_channel: int | None = view["heatmap_channel"]
        self.handle: StreamHandle | None = None

        self.errors = ErrorArea()
        self.layer_select = widgets.Dropdown(options=[], description="layer")
        self.layer_select.add_class("iua-layer-select")
        rtol_shown = engine.rtol if view["rtol"] is None else view["rtol"]
        self.thresholds = ThresholdControls(engine.grid, start, rtol_shown)
        self.progress = ProgressControls()
        self.table = SortableTable(
            LAYER_COLUMNS, row_key="layer", sort_column=view["sort_column"],
            sort_ascending=view["sort_ascending"],
        )
        self.table.add_class("iua-layer-table")
        self.alert_note = widgets.HTML("")
        self.alert_note.add_class("iua-alert-note")
        self.heatmap = UnitHeatmap()
        self.heatmap.figure.title = "Waiting for the first batch"
        self.drilldown = UnitDrilldown()
        super().__init__(
            children=[
                widgets.HBox([self.layer_select]),
                self.thresholds,
                self.progress,
                self.table,
                self.alert_note,
                widgets.HBox(
                    [self.heatmap, self.drilldown], layout=widgets.Layout(flex_flow="row wrap")
                ),
                self.errors,
            ]
        )
        self.add_class("iua-dashboard")

        self.throttle = Throttle(self._refresh_from_batch, redraw_interval)
        self._observer = guarded(self.errors, "Dashboard update", self._on_batch)
        self.layer_select.observe(
            guarded(self.errors, "Layer selection", self._on_layer), names="value"
        )
        self.table.observe(
            guarded(self.errors, "Table row selection", self._on_row), names="selected"
        )
        self.thresholds.slider.observe(
            guarded(self.errors, "Threshold change", self._on_threshold), names="value"
        )
        self.thresholds.rtol_box.observe(
            guarded(self.errors, "rtol change", self._on_threshold), names="value"
        )
        buttons = self.progress
        buttons.pause_button.on_click(guarded(self.errors, "Pause", lambda _: self.pause()))
        buttons.resume_button.on_click(guarded(self.errors, "Resume", lambda _: self.resume()))
        buttons.cancel_button.on_click(guarded(self.errors, "Cancel", lambda _: self.cancel()))
        engine.observe(self._observer)
        try:
            self.refresh()
        except BaseException:
            self.close()
            raise

    # -- public state ------------------------------------------------------

    @property
    def atol(self) -> float:
        """Current grid threshold; setting a non-number or an off-grid value raises."""
        return self.thresholds.atol

    @atol.setter
    def atol(self, value: float) -> None:
        self.thresholds.slider.value = grid_atol(self.engine, value)

    @property
    def layer(self) -> str | None:
        """Selected layer name."""
        return self.layer_select.value

    @layer.setter
    def layer(self, name: str) -> None:
        if name not in self.layer_select.options:
            known = list(self.layer_select.options)
            raise ValueError(f"No layer named {name!r}; known layers: {known}.")
        self.layer_select.value = name

    @property
    def source_label(self) -> str:
        """How the inputs arrived (``"loaded"``, ...), shown after the count until a stream runs."""
        return self._source_label

    @source_label.setter
    def source_label(self, value: str) -> None:
        self._source_label = str(value)
        with self._lock:
            self._show_progress()

    @property
    def dead_alert(self) -> float:
        """Fraction of dead units at or above which a layer is flagged."""
        return self._dead_alert

    @dead_alert.setter
    def dead_alert(self, value: float) -> None:
        self._dead_alert = check_fraction("dead_alert", value)
        self.refresh()

    def results(self) -> dict[str, Result]:
        """Results of every layer at the current ``atol`` and ``rtol``, from the cache."""
        with self._lock:
            key = (id(self.engine), self.atol, self.thresholds.rtol, self.engine.batches_seen)
            if key != self._results_key:
                self._results = self.engine.results_at(atol=self.atol, rtol=self.thresholds.rtol)
                self._results_key = key
            return self._results

    # -- redrawing -----------------------------------------------------------

    def refresh(self) -> None:
        """Redraw everything from the engine's cache at the current threshold."""
        with self._lock:
            results = self.results()
            sync_layer_options(self, list(results))
            rows, flagged, notes = layer_rows(results, self._dead_alert)
            with contextlib.ExitStack() as stack:
                for widget in (self.table, self.progress.bar, self.progress.label):
                    stack.enter_context(widget.hold_sync())
                self.table.set_rows(rows)
                self.table.flagged = flagged
                self.table.flag_notes = notes
                self.table.selected = self.layer_select.value
                self._show_progress()
            self.alert_note.value = alert_note(self._dead_alert)
            self._show_layer(results)

    def _refresh_from_batch(self) -> None:
        try:
            self.refresh()
        except Exception as error:
            logger.exception("Dashboard redraw failed")
            self.errors.report(f"Dashboard redraw failed: {type(error).__name__}: {error}")

    def _show_layer(self, results: dict[str, Result]) -> None:
        name = self.layer_select.value
        if name is None or name not in results:
            return
        self.heatmap.show(name, results[name])
        if self._requested_channel is not None and channel_count(results[name].unit_shape):
            self._select_channel(self._requested_channel)
        self.drilldown.show(name, results[name])

    # -- observers -------------------------------------------------------------

    def _on_batch(self, engine: StreamingIUA) -> None:
        self.throttle.request()

    def _on_layer(self, change: dict) -> None:
        if self._updating_options or change["new"] is None:
            return
        with self._lock:
            self.table.selected = change["new"]
            self._show_layer(self.results())

    def _on_row(self, change: dict) -> None:
        name = change["new"]
        if name is None or name == self.layer_select.value:
            return
        if name in self.layer_select.options:
            self.layer_select.value = name

    def _on_threshold(self, change: dict) -> None:
        if self._deferring_refresh or self.thresholds.replacing_grid:
            return
        self.refresh()

    # -- export ------------------------------------------------------------------

    def table_frame(self) -> pd.DataFrame:
        """Return the layer table as shown: current threshold, current sort order.

        ``frame.attrs`` contains ``atol``, ``rtol`` and ``dead_alert``. Column
        ``flagged`` marks rows flagged by the alerts.
        """
        with self._lock:
            rows = self.table.sorted_rows()
            flagged = set(self.table.flagged)
            settings = {
                "atol": self.atol, "rtol": self.thresholds.rtol, "dead_alert": self._dead_alert,
            }
        return rows_frame(rows, flagged, settings)

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`table_frame` to ``path`` as CSV and return the path.

        The columns of :meth:`table_frame` come first, then ``atol``,
        ``rtol`` and ``dead_alert``, the same on every row, so
        ``pandas.read_csv(path)`` gets the threshold with the numbers.
        ``iua_widgets.widgets.layer_table.read_table_csv`` reads the file
        back into the table frame, with the settings in ``frame.attrs``.
        """
        return write_table_csv(self.table_frame(), path)

    def save_heatmap_png(self, path: str | os.PathLike[str], *, size: int = 512) -> Path:
        """Write the current heatmap to ``path`` as PNG and return the path.

        The image is the heatmap's cell array (after the downsampling rule in
        the title) in the same colour map as the figure, padding cells in the
        same grey, without axes or legend. Each cell is a square of pixels,
        so the longer side is about ``size`` pixels. A cell gets at least one
        pixel, so a ``size`` below the cell count (at most 256) gives one
        pixel per cell. It is written with numpy and ``zlib``, not with
        bqplot's ``Figure.save_png``, which needs a browser front end and
        saves to the browser's downloads.

        Raises
        ------
        ValueError
            When no layer is shown yet, or ``size`` is not an int from 1 to
            ``iua_widgets.widgets.png.MAX_PNG_SIZE`` (8192).
        """
        grid = self.heatmap.grid
        if grid is None:
            raise ValueError("No heatmap to save yet: feed at least one batch first.")
        return write_png(path, upscale(grid_rgb(grid), size))

    def close(self) -> None:
        """Stop observing the engine, cancel a running stream and close the widgets.

        Also runs on a dashboard whose constructor failed part way (ipywidgets
        calls ``close`` from ``__del__``), so every attribute may be missing.
        """
        engine = getattr(self, "engine", None)
        observer = getattr(self, "_observer", None)
        if engine is not None and observer is not None:
            engine.unobserve(observer)
        if getattr(self, "handle", None) is not None:
            self.handle.cancel()
        for name in _PARTS:
            widget = getattr(self, name, None)
            if widget is not None:
                widget.close()
        super().close()
