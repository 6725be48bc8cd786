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
``iua-layer-table``                    layer table; ``th[data-column="<key>"]``,
                                       ``tr[data-row="<layer name>"]``, ``td[data-column="<key>"]``,
                                       rows with class ``selected`` and ``flagged``
``iua-heatmap``                        heatmap figure (title contains the layer name)
``iua-heatmap-view``                   box holding the heatmap and its controls
``iua-channel-select``                 channel selector of conv layers
``iua-heatmap-hover``                  label naming the unit under the mouse
``iua-progress``                       progress bar; ``iua-progress-label`` ("2048 / 2048 inputs")
``iua-pause``, ``iua-resume``,         stream buttons
``iua-cancel``
``iua-errors``                         error area
``iua-unit-table``                     unit table (same DOM contract as the layer table)
``iua-unit-histogram``                 histogram figure of unit activity
=====================================  ==========================================================

Layer table column keys: ``layer``, ``units``, ``inputs``, ``mean_inactive``,
``std_inactive``, ``mean_inactive_pct``, ``dead_units``, ``dead_pct``,
``nonfinite``. Unit table column keys: ``unit``, ``inactive``,
``proportion``, ``dead``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd

from ..engine import Result, StreamingIUA
from ..engine.grid import grid_index
from ..results.table import layer_row
from .controls import ErrorArea, ProgressControls, ThresholdControls, guarded
from .drilldown import UnitDrilldown
from .heatmap import UnitHeatmap
from .heatmap_grid import to_rgb
from .png import upscale, write_png
from .streaming import END_STATES, StreamHandle, Throttle, stream_total
from .table import SortableTable, column

logger = logging.getLogger(__name__)

LAYER_COLUMNS = [
    column("layer", "layer", "text"),
    column("units", "units", "int"),
    column("inputs", "inputs", "int"),
    column("mean_inactive", "mean inactive", "float", digits=2),
    column(
        "std_inactive", "std", "float", digits=2,
        title="Population std of inactive units per input",
    ),
    column("mean_inactive_pct", "mean inactive %", "float", digits=2),
    column("dead_units", "dead units", "int"),
    column("dead_pct", "dead %", "float", digits=2),
    column(
        "nonfinite", "nonfinite", "int", title="NaN and inf response values (counted as active)"
    ),
]
#: Layer table key -> column name of ``results_frame`` (``table_frame`` uses these, with "layer").
FRAME_NAMES = {
    "layer": "layer", "units": "units", "inputs": "inputs", "mean_inactive": "mean inactive",
    "std_inactive": "std inactive", "mean_inactive_pct": "mean inactive %",
    "dead_units": "dead units", "dead_pct": "dead %", "nonfinite": "nonfinite",
}
_ROW_KEYS = {
    "response": "layer", "units": "units", "inputs": "inputs", "mean inactive": "mean_inactive",
    "std inactive": "std_inactive", "mean inactive %": "mean_inactive_pct",
    "dead units": "dead_units", "dead %": "dead_pct", "nonfinite": "nonfinite",
}


def _engine_of(source: Any) -> StreamingIUA:
    if isinstance(source, StreamingIUA):
        return source
    engine = getattr(source, "engine", None)
    if isinstance(engine, StreamingIUA):
        return engine
    raise TypeError(
        f"Dashboard needs a StreamingIUA or an IUA (with .engine), got {type(source).__name__}."
    )


class Dashboard(widgets.VBox):
    """Live, linked view of an IUA engine; displays itself in a notebook.

    Parameters
    ----------
    source
        A :class:`~iua_widgets.StreamingIUA` or an :class:`~iua_widgets.IUA`.
    layer
        Layer selected first; the first layer to arrive when ``None``.
    atol
        Starting grid threshold; the engine's starting ``atol`` when ``None``.
        An ``atol`` off the grid raises ``ValueError`` naming its neighbours.
    dead_alert
        Fraction of dead units (0 to 1) at or above which a layer is flagged.
    redraw_interval
        Minimum seconds between redraws caused by arriving batches (0.1: about 10 Hz).
    """

    def __init__(
        self,
        source: Any,
        *,
        layer: str | None = None,
        atol: float | None = None,
        dead_alert: float = 0.10,
        redraw_interval: float = 0.1,
    ) -> None:
        self.engine = _engine_of(source)
        engine = self.engine
        start = engine.atol if atol is None else float(engine.grid[engine.threshold_index(atol)])
        self._dead_alert = _check_fraction(dead_alert)
        self._lock = threading.RLock()
        self._results_key: tuple | None = None
        self._results: dict[str, Result] = {}
        self._updating_options = False
        self._requested_layer = layer
        self.handle: StreamHandle | None = None

        self.errors = ErrorArea()
        self.layer_select = widgets.Dropdown(options=[], description="layer")
        self.layer_select.add_class("iua-layer-select")
        self.thresholds = ThresholdControls(engine.grid, start, engine.rtol)
        self.progress = ProgressControls()
        self.table = SortableTable(LAYER_COLUMNS, row_key="layer", sort_column="layer")
        self.table.add_class("iua-layer-table")
        self.heatmap = UnitHeatmap()
        self.heatmap.figure.title = "Waiting for the first batch"
        self.drilldown = UnitDrilldown()
        super().__init__(
            children=[
                widgets.HBox([self.layer_select]),
                self.thresholds,
                self.progress,
                self.table,
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
        self.refresh()

    # -- public state ------------------------------------------------------

    @property
    def atol(self) -> float:
        """Current grid threshold; setting an off-grid value raises ``ValueError``."""
        return self.thresholds.atol

    @atol.setter
    def atol(self, value: float) -> None:
        self.thresholds.slider.value = float(self.engine.grid[grid_index(self.engine.grid, value)])

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
    def dead_alert(self) -> float:
        """Fraction of dead units at or above which a layer is flagged."""
        return self._dead_alert

    @dead_alert.setter
    def dead_alert(self, value: float) -> None:
        self._dead_alert = _check_fraction(value)
        self.refresh()

    def results(self) -> dict[str, Result]:
        """Results of every layer at the current ``atol`` and ``rtol``, from the cache."""
        with self._lock:
            key = (self.atol, self.thresholds.rtol, self.engine.batches_seen)
            if key != self._results_key:
                self._results = self.engine.results_at(atol=self.atol, rtol=self.thresholds.rtol)
                self._results_key = key
            return self._results

    # -- redrawing -----------------------------------------------------------

    def refresh(self) -> None:
        """Redraw everything from the engine's cache at the current threshold."""
        with self._lock:
            results = self.results()
            self._sync_layer_options(list(results))
            rows, flagged, notes = self._layer_rows(results)
            with contextlib.ExitStack() as stack:
                for widget in (self.table, self.progress.bar, self.progress.label):
                    stack.enter_context(widget.hold_sync())
                self.table.set_rows(rows)
                self.table.flagged = flagged
                self.table.flag_notes = notes
                self.table.selected = self.layer_select.value
                self._show_progress()
            self._show_layer(results)

    def _refresh_from_batch(self) -> None:
        try:
            self.refresh()
        except Exception as error:  # noqa: BLE001 - timer threads must not die silently
            logger.exception("Dashboard redraw failed")
            self.errors.report(f"Dashboard redraw failed: {type(error).__name__}: {error}")

    def _layer_rows(self, results: dict[str, Result]) -> tuple[list[dict], list[str], dict]:
        rows, flagged, notes = [], [], {}
        for name, result in results.items():
            frame_row = layer_row(name, result)
            rows.append({_ROW_KEYS[k]: v for k, v in frame_row.items()})
            reasons = []
            if result.units and result.dead_fraction >= self._dead_alert:
                reasons.append(
                    f"{100 * result.dead_fraction:.1f} % dead units "
                    f"(alert at {100 * self._dead_alert:g} %)"
                )
            if result.nonfinite:
                reasons.append(
                    f"{result.nonfinite} nonfinite values (NaN or inf), counted as active"
                )
            if reasons:
                flagged.append(name)
                notes[name] = "; ".join(reasons)
        return rows, flagged, notes

    def _sync_layer_options(self, names: list[str]) -> None:
        if list(self.layer_select.options) == names:
            return
        current = self.layer_select.value
        chosen = self._requested_layer if self._requested_layer in names else current
        if chosen not in names:
            chosen = names[0] if names else None
        self._updating_options = True
        try:
            self.layer_select.options = names
            self.layer_select.value = chosen
        finally:
            self._updating_options = False
        if chosen == self._requested_layer:
            self._requested_layer = None

    def _show_layer(self, results: dict[str, Result]) -> None:
        name = self.layer_select.value
        if name is None or name not in results:
            return
        self.heatmap.show(name, results[name])
        self.drilldown.show(name, results[name])

    def _show_progress(self) -> None:
        state = self.handle.state if self.handle is not None else "idle"
        self.progress.show(
            self.engine.inputs_seen, self.engine.expected_inputs,
            self.engine.inputs_per_second, state,
        )

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
        self.refresh()

    # -- streaming ---------------------------------------------------------------

    def stream(
        self, producer: Any, *, batch_size: int = 32, total: int | None = None,
        background: bool = True,
    ) -> StreamHandle:
        """Feed ``producer`` into the engine, by default from a background thread.

        ``total`` is the number of inputs expected, and it drives the progress
        bar. When ``None`` it comes from the producer if known in advance (the
        arrays of a mapping, a PyTorch capture over a sized loader). With
        ``background=True`` the call returns at once and the controls stay
        usable (ipykernel >= 7.1 handles widget messages from threads); use
        :meth:`wait` or the returned handle's ``join`` to block. An error in
        the producer appears in the error area; the statistics gathered
        before it stay usable.

        Raises
        ------
        RuntimeError
            When a previous stream of this dashboard is still running.
        """
        if self.handle is not None and not self.handle.done:
            raise RuntimeError(
                "A stream is still running; call cancel() and wait() before starting another."
            )
        expected = stream_total(producer, total)
        if expected is not None:
            self.engine.expected_inputs = self.engine.inputs_seen + expected
        self.handle = StreamHandle(
            self.engine, producer, batch_size=batch_size,
            on_change=guarded(self.errors, "Stream state change", self._on_stream_change),
        )
        with self._lock:
            self._show_progress()  # enables the pause and cancel buttons before the first batch
        self.handle.start(background=background)
        return self.handle

    def _on_stream_change(self, handle: StreamHandle) -> None:
        if handle.error_message and not handle.error_reported:
            handle.error_reported = True
            self.errors.report(handle.error_message)
        if handle.state in END_STATES:
            self.throttle.flush()
        else:
            with self._lock:
                self._show_progress()

    def pause(self) -> None:
        """Pause the running stream after its current batch."""
        if self.handle is not None:
            self.handle.pause()

    def resume(self) -> None:
        """Resume a paused stream."""
        if self.handle is not None:
            self.handle.resume()

    def cancel(self) -> None:
        """Stop the stream after its current batch; applied batches are kept."""
        if self.handle is not None:
            self.handle.cancel()

    def wait(self, timeout: float | None = None) -> StreamHandle | None:
        """Block until the current stream ends (or ``timeout`` seconds pass); return its handle."""
        if self.handle is not None:
            self.handle.join(timeout)
        return self.handle

    # -- export ------------------------------------------------------------------

    def table_frame(self) -> pd.DataFrame:
        """Return the layer table as shown: current threshold, current sort order.

        ``frame.attrs`` contains ``atol``, ``rtol`` and ``dead_alert``. Column
        ``flagged`` marks rows flagged by the alerts.
        """
        with self._lock:
            rows = self.table.sorted_rows()
            flagged = set(self.table.flagged)
        keys = [c["key"] for c in LAYER_COLUMNS]
        frame = pd.DataFrame(
            [[row[k] for k in keys] + [row["layer"] in flagged] for row in rows],
            columns=[FRAME_NAMES[k] for k in keys] + ["flagged"],
        )
        frame.attrs.update(atol=self.atol, rtol=self.thresholds.rtol, dead_alert=self._dead_alert)
        return frame

    def to_csv(self, path: str | Path) -> Path:
        """Write :meth:`table_frame` to ``path`` as CSV and return the path."""
        path = Path(path)
        self.table_frame().to_csv(path, index=False)
        return path

    def save_heatmap_png(self, path: str | Path, *, size: int = 512) -> Path:
        """Write the current heatmap to ``path`` as PNG and return the path.

        The image is the heatmap's cell array (after the downsampling rule in
        the title) in the same colour map as the figure, each cell a square
        of pixels so the longer side is about ``size`` pixels, without axes
        or legend. It is written with numpy and ``zlib``, not with bqplot's
        ``Figure.save_png``, which needs a browser front end and saves to the
        browser's downloads.

        Raises
        ------
        ValueError
            When no layer is shown yet.
        """
        grid = self.heatmap.grid
        if grid is None:
            raise ValueError("No heatmap to save yet: feed at least one batch first.")
        return write_png(path, upscale(to_rgb(grid.values), size))

    def close(self) -> None:
        """Stop observing the engine, cancel a running stream and close the widgets."""
        self.engine.unobserve(self._observer)
        self.cancel()
        for widget in (
            self.layer_select, self.thresholds, self.progress, self.table, self.heatmap,
            self.drilldown, self.errors,
        ):
            widget.close()


def _check_fraction(value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"dead_alert must be a fraction between 0 and 1, got {value!r}.")
    return value
