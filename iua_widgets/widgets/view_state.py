"""The dashboard's view state: what is selected and how, as a JSON-serialisable dict.

Keys (all of them in ``Dashboard.view_state()``; ``apply_view_state`` takes
any subset):

==================  ===========================================================
``layer``           selected layer name, or ``None``
``atol``            threshold on the engine's grid (``None``: the engine's own)
``rtol``            rtol shown and passed to the engine (``None``: the engine's)
``dead_alert``      fraction of dead units (0 to 1) at which a layer is flagged
``sort_column``     layer table column key the rows are sorted by (``""``: none)
``sort_ascending``  sort direction, a bool
``heatmap_mode``    ``"mean"`` (mean over channels) or ``"channel"``
``heatmap_channel`` channel index (flat over the leading unit axes) when
                    ``heatmap_mode`` is ``"channel"``, else ``None``
==================  ===========================================================

File format (``<analysis path>.view.json``, next to the file that
``StreamingIUA.save`` writes): a UTF-8 JSON object ``{"format":
"iua-widgets-dashboard-view", "version": 1, "view": {...}}``. Floats are
written with Python's shortest round-trip ``repr``, so they read back exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .controls import check_real
from .layer_table import LAYER_COLUMNS

VIEW_KEYS = (
    "layer", "atol", "rtol", "dead_alert", "sort_column", "sort_ascending",
    "heatmap_mode", "heatmap_channel",
)
HEATMAP_MODES = ("mean", "channel")
VIEW_FORMAT = "iua-widgets-dashboard-view"
VIEW_VERSION = 1
VIEW_SUFFIX = ".view.json"


def check_fraction(name: str, value: Any) -> float:
    """Return ``value`` as a float in [0, 1]; raise ``TypeError`` or ``ValueError`` otherwise."""
    value = check_real(name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a fraction between 0 and 1, got {value!r}.")
    return value


def check_tolerance(name: str, value: Any) -> float | None:
    """Return a finite, non-negative tolerance as a float (``None`` passes through)."""
    if value is None:
        return None
    value = check_real(name, value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}.")
    return value


def check_view_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the keys present in ``state`` and return them normalised.

    Only the checks that need no engine happen here: the dashboard checks
    that the layer exists and that ``atol`` is on its grid.

    Raises
    ------
    ValueError
        For an unknown key or an invalid value.
    TypeError
        For a value of the wrong type.
    """
    unknown = sorted(set(state) - set(VIEW_KEYS))
    if unknown:
        raise ValueError(f"Unknown view state keys {unknown}; known keys are {list(VIEW_KEYS)}.")
    checked: dict[str, Any] = {}
    if "layer" in state:
        layer = state["layer"]
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"layer must be a layer name (str) or None, got {layer!r}.")
        checked["layer"] = layer
    for name in ("atol", "rtol"):
        if name in state:
            checked[name] = check_tolerance(name, state[name])
    if "dead_alert" in state:
        checked["dead_alert"] = check_fraction("dead_alert", state["dead_alert"])
    if "sort_column" in state:
        checked["sort_column"] = _check_sort_column(state["sort_column"])
    if "sort_ascending" in state:
        ascending = state["sort_ascending"]
        if not isinstance(ascending, bool):
            raise TypeError(f"sort_ascending must be True or False, got {ascending!r}.")
        checked["sort_ascending"] = ascending
    if "heatmap_mode" in state or "heatmap_channel" in state:
        channel = state.get("heatmap_channel")
        mode = state.get("heatmap_mode", "mean" if channel is None else "channel")
        checked["heatmap_mode"], checked["heatmap_channel"] = _check_heatmap(
            mode, channel
        )
    return checked


def _check_sort_column(key: Any) -> str:
    known = [c["key"] for c in LAYER_COLUMNS]
    if key != "" and key not in known:
        raise ValueError(f"Unknown sort column {key!r}; layer table columns are {known}.")
    return key


def _check_heatmap(mode: Any, channel: Any) -> tuple[str, int | None]:
    if mode not in HEATMAP_MODES:
        raise ValueError(f"heatmap_mode must be one of {HEATMAP_MODES}, got {mode!r}.")
    if mode == "mean":
        if channel is not None:
            raise ValueError(
                f"heatmap_channel must be None with heatmap_mode='mean', got {channel!r}; "
                "pass heatmap_mode='channel' to show one channel."
            )
        return mode, None
    if isinstance(channel, bool) or not isinstance(channel, int | np.integer) or channel < 0:
        raise ValueError(
            f"heatmap_channel must be a channel index >= 0 with heatmap_mode='channel', "
            f"got {channel!r}."
        )
    return mode, int(channel)


def view_state_path(path: str | os.PathLike[str]) -> Path:
    """Return the view file that belongs to the analysis file ``path``: ``<path>.view.json``."""
    path = Path(path)
    return path.with_name(path.name + VIEW_SUFFIX)


def write_view_state(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` as JSON atomically (temporary file, then rename)."""
    path = Path(path)
    document = {"format": VIEW_FORMAT, "version": VIEW_VERSION, "view": dict(state)}
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    return path


def read_view_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a view file written by :func:`write_view_state` and return its checked state.

    Raises
    ------
    ValueError
        When the file is not valid JSON, not a view file, of a newer
        version, or contains an invalid state.
    """
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not a valid view file: {error}.") from None
    if not isinstance(document, dict) or document.get("format") != VIEW_FORMAT:
        raise ValueError(f"{path} is not a dashboard view file (no format {VIEW_FORMAT!r}).")
    version = document.get("version")
    if not isinstance(version, int) or version > VIEW_VERSION:
        raise ValueError(
            f"{path} has view format version {version!r}; this iua_widgets reads version "
            f"{VIEW_VERSION} at most. Upgrade iua_widgets."
        )
    view = document.get("view")
    if not isinstance(view, dict):
        raise ValueError(f"{path} has no 'view' object.")
    try:
        return check_view_state(view)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path} contains an invalid view state: {error}") from None
