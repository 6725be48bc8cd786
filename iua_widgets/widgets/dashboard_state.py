"""Switching a dashboard's engine, and its view state: read, apply, save and load.

:class:`ViewStateMixin` is part of :class:`~iua_widgets.widgets.dashboard.Dashboard`
and relies on its attributes (``engine``, ``thresholds``, ``table``,
``heatmap``, ``layer_select``, ``_lock``, ``refresh``, ...).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Self

import numpy as np

from ..engine import StreamingIUA
from ..engine.state import engine_of
from .controls import check_real
from .heatmap_grid import MEAN_OVER_CHANNELS, channel_count
from .view_state import (
    check_view_state,
    read_view_state,
    view_state_path,
    write_view_state,
)

logger = logging.getLogger(__name__)


def check_layer(engine: StreamingIUA, name: str | None) -> None:
    """Reject a layer the engine does not have; an engine without layers yet accepts any name."""
    known = engine.layer_names
    if name is not None and known and name not in known:
        raise ValueError(f"No layer named {name!r}; known layers: {known}.")


def grid_atol(engine: StreamingIUA, value: Any) -> float:
    """Return ``value`` as the engine's grid threshold; raise for non-numbers and off-grid values."""
    value = check_real("atol", value)
    return float(engine.grid[engine.threshold_index(value)])


def check_channel(engine: StreamingIUA, layer: str | None, channel: int) -> None:
    """Reject a heatmap channel that ``layer`` (the first layer when ``None``) does not have.

    A layer that has not arrived yet is checked when it is shown.
    """
    names = engine.layer_names
    if layer is None and names:
        layer = names[0]
    if layer is None or layer not in names:
        return
    shape = engine.layer_stats(layer).unit_shape
    channels = channel_count(shape)
    if not 0 <= channel < channels:
        have = f"channels 0 to {channels - 1}" if channels else "no channels (3+ unit axes)"
        raise ValueError(
            f"Layer {layer!r} (unit shape {shape}) has {have}, so heatmap channel "
            f"{channel} does not exist; pass heatmap_mode='mean' or a channel in range."
        )


class ViewStateMixin:
    """Engine switching and view state of the dashboard."""

    def set_source(self, source: Any) -> None:
        """Show another engine (a newer training snapshot, a loaded file) in this dashboard.

        The old engine is no longer observed. The selected layer stays if the
        new engine has it, else its first layer is selected. ``atol`` stays if
        it is on the new grid, else the new engine's starting ``atol`` is
        shown. rtol, the alert, the sort, the heatmap channel and
        ``source_label`` stay, and the progress row shows the count alone
        until :meth:`stream` is called again.

        Raises
        ------
        TypeError
            When ``source`` is not a ``StreamingIUA`` or an ``IUA``.
        RuntimeError
            When a stream of this dashboard still feeds the current engine.
        """
        engine = engine_of(source)
        if self.handle is not None and not self.handle.done:
            raise RuntimeError(
                "A stream still feeds the current engine; call cancel() and wait() first."
            )
        with self._lock:
            atol = self.atol if np.any(engine.grid == self.atol) else engine.atol
            self.engine.unobserve(self._observer)
            self.engine = engine
            self.handle = None
            self._results_key = None
            engine.observe(self._observer)
            with self._deferred_refresh():
                self.thresholds.set_grid(engine.grid, atol)
        logger.info("Dashboard switched to an engine with %d inputs", engine.inputs_seen)

    def view_state(self) -> dict[str, Any]:
        """Return what the view shows as a JSON-serialisable dict (keys in :mod:`.view_state`)."""
        with self._lock:
            layer = self.layer if self._requested_layer is None else self._requested_layer
            mode, channel = self._heatmap_view()
            return {
                "layer": layer, "atol": self.atol, "rtol": self.thresholds.rtol,
                "dead_alert": self._dead_alert, "sort_column": self.table.sort_column,
                "sort_ascending": bool(self.table.sort_ascending),
                "heatmap_mode": mode, "heatmap_channel": channel,
            }

    def apply_view_state(self, state: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`view_state`; absent keys leave their part unchanged.

        Everything is checked first, so an invalid state changes nothing.
        ``atol`` or ``rtol`` set to ``None`` mean the engine's own values.

        Raises
        ------
        ValueError, TypeError
            For an unknown key, an invalid value, a layer the engine does not
            have, an off-grid ``atol`` or a channel the layer does not have.
        """
        view = check_view_state(state)
        with self._lock:
            atol = view.get("atol", self.atol)
            atol = self.engine.atol if atol is None else grid_atol(self.engine, atol)
            layer = view.get("layer")
            check_layer(self.engine, layer)
            if view.get("heatmap_mode") == "channel":
                check_channel(self.engine, layer or self.layer, view["heatmap_channel"])
            with self._deferred_refresh():
                if "rtol" in view:
                    self.thresholds.rtol_box.value = (
                        self.engine.rtol if view["rtol"] is None else view["rtol"]
                    )
                if "dead_alert" in view:
                    self._dead_alert = view["dead_alert"]
                if "sort_column" in view:
                    self.table.sort_column = view["sort_column"]
                if "sort_ascending" in view:
                    self.table.sort_ascending = view["sort_ascending"]
                self.thresholds.slider.value = atol
                if layer is not None and layer in self.layer_select.options:
                    self.layer_select.value = layer
                elif layer is not None:
                    self._requested_layer = layer
            if "heatmap_mode" in view:
                self._select_channel(view["heatmap_channel"])

    @contextlib.contextmanager
    def _deferred_refresh(self) -> Iterator[None]:
        # Threshold changes inside the block redraw once, at its end.
        self._deferring_refresh = True
        try:
            yield
        finally:
            self._deferring_refresh = False
        self.refresh()

    def _heatmap_view(self) -> tuple[str, int | None]:
        if self._requested_channel is not None:
            return "channel", self._requested_channel
        result = self.heatmap.result
        value = self.heatmap.channel_select.value
        if result is None or not channel_count(result.unit_shape) or value == MEAN_OVER_CHANNELS:
            return "mean", None
        return "channel", int(value)

    def _select_channel(self, channel: int | None) -> None:
        """Show ``channel`` (``None``: the mean over channels) now, or once the layer arrives."""
        result = self.heatmap.result
        if channel is None:
            self._requested_channel = None
            if result is not None and channel_count(result.unit_shape):
                self.heatmap.channel_select.value = MEAN_OVER_CHANNELS
            return
        if result is None:
            self._requested_channel = channel
            return
        self._requested_channel = None
        check_channel(self.engine, self.heatmap.name, channel)
        self.heatmap.channel_select.value = channel

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the analysis with ``engine.save(path)`` and the view state to ``<path>.view.json``.

        Returns the path of the analysis file. :meth:`load` reads both back.
        """
        with self._lock:
            state = self.view_state()
        target = self.engine.save(path)
        write_view_state(state, view_state_path(path))
        logger.info("Saved the dashboard view state next to %s", target)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, redraw_interval: float = 0.1) -> Self:
        """Open an analysis file in a new dashboard, with the view state saved next to it.

        Without a ``<path>.view.json`` file (an analysis saved by
        ``StreamingIUA.save`` alone) the dashboard starts with the default view.
        Its progress row reads ``"<inputs> inputs (loaded)"``.
        """
        engine = StreamingIUA.load(path)
        state_path = view_state_path(path)
        state = read_view_state(state_path) if state_path.exists() else {}
        if not state:
            logger.info("No view state at %s; showing the default view", state_path)
        dashboard = cls(engine, redraw_interval=redraw_interval, **state)
        dashboard.source_label = "loaded"
        return dashboard
