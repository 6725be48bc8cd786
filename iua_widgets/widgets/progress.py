"""A progress bar for ``IUA.introspect`` in a notebook."""

from __future__ import annotations

import sys
import time

import ipywidgets as widgets
from IPython.display import display

from ..engine import StreamingIUA

#: Seconds between two redraws of the bar, so fast producers do not flood the comm.
REDRAW_INTERVAL = 0.1


def in_notebook_kernel() -> bool:
    """Return whether this code runs in a Jupyter kernel, where a widget can be displayed."""
    if "ipykernel" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class IntrospectProgress:
    """A progress bar and label that follow an engine while it consumes a producer.

    The bar fills against ``engine.expected_inputs`` when the producer's size
    is known and shows only the count otherwise. Redraws are throttled.
    """

    def __init__(self, engine: StreamingIUA) -> None:
        self.engine = engine
        self.bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description="IUA")
        self.label = widgets.Label("starting")
        self.box = widgets.HBox([self.bar, self.label])
        self.box.add_class("iua-introspect-progress")
        self._last_redraw = 0.0
        self._started = time.perf_counter()
        engine.observe(self._on_batch)
        display(self.box)

    def _on_batch(self, engine: StreamingIUA) -> None:
        now = time.perf_counter()
        if now - self._last_redraw >= REDRAW_INTERVAL:
            self._last_redraw = now
            self._draw("running")

    def _draw(self, state: str) -> None:
        seen = self.engine.inputs_seen
        expected = self.engine.expected_inputs
        with self.box.hold_sync():
            if expected:
                self.bar.value = min(1.0, seen / expected)
                self.label.value = f"{seen:,} / {expected:,} inputs · {state}"
            else:
                self.bar.value = 1.0 if state == "finished" else 0.0
                self.label.value = f"{seen:,} inputs · {state}"

    def close(self, error: BaseException | None = None) -> None:
        """Stop following the engine and show the final count (or the failure)."""
        self.engine.unobserve(self._on_batch)
        elapsed = time.perf_counter() - self._started
        if error is None:
            self._draw(f"finished in {elapsed:.1f} s")
            self.bar.bar_style = "success"
        else:
            self._draw(f"failed: {type(error).__name__}")
            self.bar.bar_style = "danger"
