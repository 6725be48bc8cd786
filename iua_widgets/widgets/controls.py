"""Dashboard controls: threshold selection, streaming progress and the error area."""

from __future__ import annotations

import contextlib
import html
import logging
import numbers
import threading
from collections.abc import Callable, Iterator
from typing import Any

import ipywidgets as widgets
import numpy as np

from ..engine.grid import grid_index

logger = logging.getLogger(__name__)

#: Errors listed in the error area; older ones are counted, not shown.
MAX_SHOWN_ERRORS = 20
#: Text of the rtol note; an invalid rtol adds its error after it.
RTOL_NO_EFFECT = "<i>rtol: no effect against a zero reference</i>"


def check_real(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a real number (numpy scalars included).

    Raises
    ------
    TypeError
        When ``value`` is a bool, a string or any other non-real object.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number (int or float), got {value!r} "
            f"({type(value).__name__}); convert text with float(value)."
        )
    return float(value)


def format_threshold(value: float) -> str:
    """Readable label of a grid threshold: ``0``, ``1e-08``, ``2e-08``, ``0.5``.

    Falls back to ``repr`` when the short form would not parse back to ``value``.
    """
    value = float(value)
    if value == 0.0:
        return "0"
    label = f"{value:g}"
    return label if float(label) == value else repr(value)


class ThresholdControls(widgets.VBox):
    """The atol slider over the engine's grid, a typeable atol box and the rtol box.

    The slider is a ``SelectionSlider``, so it reaches 0 and every grid value,
    but its readout is read-only. The text box beside it takes a typed value
    and Enter, snaps it to the nearest grid value on a log scale and shows a
    note when it did.
    ``rtol`` is kept for DNIKit compatibility and marked as having no effect,
    because against a zero reference ``isclose(x, 0)`` is ``|x| <= atol``.
    An invalid rtol is reverted, and its error appears in ``rtol_note`` after
    that remark.

    ``replacing_grid`` is true while :meth:`set_grid` swaps the slider's
    options: the slider then passes through the new grid's first value, and
    observers that forward the slider value should skip those changes.
    """

    def __init__(self, grid: np.ndarray, atol: float, rtol: float) -> None:
        self.grid = np.asarray(grid, dtype=np.float64)
        options = [(format_threshold(v), float(v)) for v in self.grid]
        start = float(self.grid[grid_index(self.grid, atol)])
        self.slider = widgets.SelectionSlider(
            options=options, value=start, description="atol", continuous_update=True,
            layout=widgets.Layout(width="420px"),
        )
        self.slider.add_class("iua-atol")
        self.text = widgets.Text(
            value=format_threshold(start), continuous_update=False,
            placeholder="type atol, Enter", layout=widgets.Layout(width="110px"),
            tooltip="Type an atol and press Enter; it snaps to the nearest grid value.",
        )
        self.text.add_class("iua-atol-text")
        self.note = widgets.HTML("")
        self.note.add_class("iua-atol-note")
        self.rtol_box = widgets.FloatText(
            value=rtol, description="rtol", layout=widgets.Layout(width="200px"),
            tooltip="isclose(x, 0, rtol, atol) is |x| <= atol: rtol has no effect.",
        )
        self.rtol_box.add_class("iua-rtol")
        self.rtol_note = widgets.HTML(RTOL_NO_EFFECT)
        self.rtol_note.add_class("iua-rtol-note")
        super().__init__(
            children=[
                widgets.HBox([self.slider, self.text, self.note]),
                widgets.HBox([self.rtol_box, self.rtol_note]),
            ]
        )
        self.add_class("iua-threshold-controls")
        self._last_rtol = float(rtol)
        self.replacing_grid = False
        self.slider.observe(self._on_slider, names="value")
        self.text.observe(self._on_text, names="value")
        self.rtol_box.observe(self._on_rtol, names="value")

    @property
    def atol(self) -> float:
        return float(self.slider.value)

    @property
    def rtol(self) -> float:
        return self._last_rtol

    def set_grid(self, grid: np.ndarray, atol: float) -> None:
        """Put the slider on a new threshold grid at ``atol`` (a value of ``grid``)."""
        grid = np.asarray(grid, dtype=np.float64)
        value = float(grid[grid_index(grid, atol)])
        if not np.array_equal(grid, self.grid):
            options = [(format_threshold(v), float(v)) for v in grid]
            with self._replacing_grid():
                # Changing the options of a SelectionSlider (ipywidgets 8) always
                # selects the first option.
                self.grid = grid
                self.slider.options = options
        self.slider.value = value

    @contextlib.contextmanager
    def _replacing_grid(self) -> Iterator[None]:
        self.replacing_grid = True
        try:
            yield
        finally:
            self.replacing_grid = False

    def _on_slider(self, change: dict) -> None:
        # A note about an earlier typed value no longer applies; _on_text sets
        # a new one after moving the slider.
        self.note.value = ""
        self.text.value = format_threshold(change["new"])

    def _on_text(self, change: dict) -> None:
        typed = change["new"].strip()
        if typed == format_threshold(self.slider.value):
            return  # the slider wrote its own label
        try:
            index = grid_index(self.grid, float(typed), snap=True)
        except ValueError:
            self.text.value = format_threshold(self.slider.value)
            self.note.value = html.escape(
                f"{typed!r} is not a valid atol; type a number >= 0 such as 1e-8."
            )
            return
        value = float(self.grid[index])
        label = format_threshold(value)
        self.slider.value = value
        self.text.value = label
        if float(typed) != value:
            self.note.value = html.escape(f"{typed} is not on the grid; snapped to {label}.")
        else:
            self.note.value = ""

    def _on_rtol(self, change: dict) -> None:
        value = change["new"]
        if not np.isfinite(value) or value < 0:
            # Revert before writing the error, because the revert runs this
            # observer again and resets the note.
            self.rtol_box.value = self._last_rtol
            error = html.escape(
                f"rtol must be finite and >= 0, got {value!r}; kept {self._last_rtol!r}."
            )
            self.rtol_note.value = f"{RTOL_NO_EFFECT} <b>{error}</b>"
            return
        self._last_rtol = float(value)
        self.rtol_note.value = RTOL_NO_EFFECT


class ProgressControls(widgets.HBox):
    """Progress of a stream (bar, label, pause, resume and cancel), or a plain count without one.

    Until a stream starts, :meth:`show_count` shows only a label such as
    ``"1,797 inputs (loaded)"``. :meth:`show` brings back the bar and the buttons.
    """

    def __init__(self) -> None:
        self.bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description="inputs")
        self.bar.add_class("iua-progress")
        self.label = widgets.Label("0 inputs")
        self.label.add_class("iua-progress-label")
        self.pause_button = widgets.Button(description="Pause", icon="pause", disabled=True)
        self.pause_button.add_class("iua-pause")
        self.resume_button = widgets.Button(description="Resume", icon="play", disabled=True)
        self.resume_button.add_class("iua-resume")
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True)
        self.cancel_button.add_class("iua-cancel")
        for button in (self.pause_button, self.resume_button, self.cancel_button):
            button.layout.width = "100px"
        super().__init__(
            children=[
                self.bar, self.label, self.pause_button, self.resume_button, self.cancel_button,
            ]
        )
        self.add_class("iua-progress-controls")

    @property
    def stream_parts(self) -> tuple[widgets.Widget, ...]:
        """The widgets shown only while or after a stream runs: the bar and the buttons."""
        return (self.bar, self.pause_button, self.resume_button, self.cancel_button)

    def show_count(self, seen: int, note: str = "") -> None:
        """Show ``seen`` inputs and ``note`` (how they arrived) alone, without bar or buttons."""
        for widget in self.stream_parts:
            widget.layout.display = "none"
        self.label.value = f"{seen:,} inputs" + (f" ({note})" if note else "")

    def show(self, seen: int, expected: int | None, rate: float, state: str) -> None:
        """Show the bar, the label and the buttons of a stream in ``state``.

        Without an expected count (``None``, 0, or fewer than ``seen``: a stale
        or wrong total) the label shows ``seen`` alone and the bar stays empty
        until the stream finishes, then full. ``rate`` is in inputs per second.
        """
        if expected is not None and seen > expected:
            expected = None
        done = state == "finished"
        for widget in self.stream_parts:
            widget.layout.display = None
        with self.bar.hold_sync():
            if expected:
                self.bar.value = 1.0 if done else min(1.0, seen / expected)
            else:
                self.bar.value = 1.0 if done else 0.0
            self.bar.bar_style = {
                "finished": "success", "failed": "danger", "cancelled": "warning",
                "paused": "info",
            }.get(state, "")
        text = f"{seen:,} / {expected:,} inputs" if expected else f"{seen:,} inputs"
        if rate > 0:
            text += f" · {rate:,.0f} inputs/s"
        if state != "running":
            text += f" · {state}"
        self.label.value = text
        running = state in ("running", "paused")
        self.pause_button.disabled = state != "running"
        self.resume_button.disabled = state != "paused"
        self.cancel_button.disabled = not running


class ErrorArea(widgets.HTML):
    """Visible list of errors from observers and producers, newest last.

    Text is HTML-escaped, so layer names and messages show literally.
    """

    def __init__(self) -> None:
        super().__init__(value="")
        self.add_class("iua-errors")
        self.messages: list[str] = []
        self._lock = threading.Lock()

    def report(self, message: str) -> None:
        """Append ``message`` and show the latest ``MAX_SHOWN_ERRORS``."""
        with self._lock:
            self.messages.append(message)
            shown = self.messages[-MAX_SHOWN_ERRORS:]
            hidden = len(self.messages) - len(shown)
        parts = [f"<pre>{html.escape(m)}</pre>" for m in shown]
        if hidden:
            parts.insert(0, f"<p>{hidden} earlier errors are not shown.</p>")
        self.value = "<div class='iua-error-list'>" + "".join(parts) + "</div>"

    def clear(self) -> None:
        """Forget all errors."""
        with self._lock:
            self.messages.clear()
        self.value = ""


def guarded(errors: ErrorArea, context: str, callback: Callable[..., None]) -> Callable[..., None]:
    """Wrap a widget observer so that its exceptions appear in ``errors`` instead of vanishing.

    ipywidgets only logs exceptions raised in trait observers, where a
    notebook user rarely sees them.
    """

    def run(*args, **kwargs) -> None:
        try:
            callback(*args, **kwargs)
        except Exception as error:
            logger.exception("%s failed", context)
            errors.report(f"{context} failed: {type(error).__name__}: {error}")

    return run


def sync_layer_options(view: Any, names: list[str]) -> None:
    """Set ``view.layer_select``'s options to ``names``, keeping a sensible selection.

    ``view`` is a dashboard or timeline with ``layer_select``,
    ``_requested_layer`` (a layer asked for before it arrived) and
    ``_updating_options`` (set while options change, so observers ignore it).
    The requested layer wins once listed, then the current one, then the first.
    """
    select = view.layer_select
    if list(select.options) == names:
        return
    requested = view._requested_layer
    chosen = requested if requested in names else select.value
    if chosen not in names:
        chosen = names[0] if names else None
    view._updating_options = True
    try:
        select.options = names
        select.value = chosen
    finally:
        view._updating_options = False
    if chosen is not None and chosen == requested:
        view._requested_layer = None
