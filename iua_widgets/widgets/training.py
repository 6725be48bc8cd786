"""The training timeline above the full dashboard of the latest snapshot, with linked controls."""

from __future__ import annotations

import logging
import threading
from typing import Any

import ipywidgets as widgets

from .controls import guarded
from .dashboard import Dashboard
from .streaming import Throttle
from .timeline import TrainingTimeline

logger = logging.getLogger(__name__)


class TrainingDashboard(widgets.VBox):
    """A :class:`TrainingTimeline` and a :class:`Dashboard` of the latest snapshot.

    The layer selectors and atol sliders of both are linked. Each snapshot
    has its own analysis, so the dashboard below switches to the latest one
    (:meth:`Dashboard.set_source`, which keeps its layer, threshold, sort and
    heatmap channel). That happens at most once per ``dashboard_interval``
    seconds while training runs, and always when tracking stops. The
    timeline redraws at about 10 Hz.

    Parameters
    ----------
    tracker
        A :class:`~iua_widgets.torch.tracking.TrainingTracker`.
    layer, atol
        Layer and grid threshold shown first (see :class:`TrainingTimeline`).
    redraw_interval
        Minimum seconds between timeline redraws.
    dashboard_interval
        Minimum seconds between two switches of the dashboard to a newer snapshot.
    """

    def __init__(
        self,
        tracker: Any,
        *,
        layer: str | None = None,
        atol: float | None = None,
        redraw_interval: float = 0.1,
        dashboard_interval: float = 1.0,
    ) -> None:
        self.tracker = tracker
        self.timeline = TrainingTimeline(
            tracker, layer=layer, atol=atol, redraw_interval=redraw_interval
        )
        self.dashboard: Dashboard | None = None
        self._shown_snapshot: Any = None
        self._lock = threading.RLock()
        self._placeholder = widgets.HTML("<i>The dashboard appears after the first snapshot.</i>")
        super().__init__(children=[self.timeline, self._placeholder])
        self.add_class("iua-training-dashboard")
        errors = self.timeline.errors
        self.throttle = Throttle(self._show_latest_from_tracker, dashboard_interval)
        self._observer = guarded(errors, "Dashboard switch", self._on_snapshot)
        self.timeline.layer_select.observe(
            guarded(errors, "Layer link", self._on_timeline_layer), names="value"
        )
        self.timeline.atol_slider.observe(
            guarded(errors, "Threshold link", self._on_timeline_atol), names="value"
        )
        tracker.observe(self._observer)
        self.show_latest()

    def show_latest(self) -> None:
        """Show the latest snapshot in the dashboard, unless it already shows it."""
        with self._lock:
            snapshots = list(self.tracker.snapshots)
            if not snapshots or snapshots[-1] is self._shown_snapshot:
                return
            latest = snapshots[-1]
            if latest.engine is None:
                return
            if self.dashboard is None:
                self.dashboard = self._build_dashboard(latest.engine)
                self.children = [self.timeline, self.dashboard]
            else:
                self.dashboard.set_source(latest.engine)
            self._shown_snapshot = latest

    def _build_dashboard(self, engine: Any) -> Dashboard:
        dashboard = Dashboard(engine, layer=self.timeline.layer, atol=self.timeline.atol)
        dashboard.source_label = "snapshot"
        errors = self.timeline.errors
        dashboard.layer_select.observe(
            guarded(errors, "Layer link", self._on_dashboard_layer), names="value"
        )
        dashboard.thresholds.slider.observe(
            guarded(errors, "Threshold link", self._on_dashboard_atol), names="value"
        )
        return dashboard

    def _show_latest_from_tracker(self) -> None:
        try:
            self.show_latest()
        except Exception as error:
            logger.exception("Dashboard switch to the latest snapshot failed")
            self.timeline.errors.report(
                f"Dashboard switch to the latest snapshot failed: {type(error).__name__}: {error}"
            )

    def _on_snapshot(self, tracker: Any) -> None:
        self.throttle.request()

    def _on_timeline_layer(self, change: dict) -> None:
        dashboard = self.dashboard
        name = change["new"]
        if dashboard is not None and name in dashboard.layer_select.options:
            if dashboard.layer != name:
                dashboard.layer = name

    def _on_timeline_atol(self, change: dict) -> None:
        dashboard = self.dashboard
        if dashboard is not None and dashboard.atol != change["new"]:
            dashboard.atol = change["new"]

    def _on_dashboard_layer(self, change: dict) -> None:
        name = change["new"]
        if name is not None and name in self.timeline.layer_select.options:
            if self.timeline.layer != name:
                self.timeline.layer = name

    def _on_dashboard_atol(self, change: dict) -> None:
        if self.dashboard is None or self.dashboard.thresholds.replacing_grid:
            return
        if self.timeline.atol != change["new"]:
            self.timeline.atol = change["new"]

    def close(self) -> None:
        """Stop observing the tracker and close both views."""
        self.tracker.unobserve(self._observer)
        self.timeline.close()
        if self.dashboard is not None:
            self.dashboard.close()
        super().close()
