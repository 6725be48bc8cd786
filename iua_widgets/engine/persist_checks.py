"""Validation of analysis files: metadata schema and consistency of the cached counts.

Every check raises ``InvalidContent`` with a sentence naming the field or
layer and the problem; ``persist.load`` turns it into ``AnalysisFileError``
with the file's path. Nothing here trusts a value it has not checked: types,
ranges, shapes and dtypes are checked before any array is allocated, and the
counts are checked against each other, so a file that decodes cleanly also
returns results at every threshold without error.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from .grid import validate_tolerance
from .layer import PER_INPUT_POLICIES, UNITS
from .state import UINT32_LIMIT, AnalysisState, LayerState

FORMAT_NAME = "iua-widgets-analysis"
FORMAT_VERSION = 1

TOP_LEVEL_KEYS = frozenset({
    "format", "version", "writer", "rtol", "atol", "grid", "unit", "channel_axis",
    "per_input", "inputs_seen", "batches_seen", "expected_inputs", "layers", "sha256",
})
LAYER_KEYS = frozenset({
    "name", "unit_shape", "inputs", "nonfinite", "count_sums", "count_square_sums",
})
#: Largest grid a file may declare; the default grid has 44 thresholds.
MAX_GRID_SIZE = 100_000
#: Largest count a file may declare (inputs, units); the cache counts in int64.
MAX_COUNT = 2**63 - 1
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,79}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class InvalidContent(Exception):
    """A problem with the content of an analysis file (message without the path)."""


def parse_metadata(raw: bytes) -> dict[str, Any]:
    """Decode the metadata member: UTF-8 JSON object, no NaN or Infinity constants."""

    def reject_constant(name: str) -> Any:
        raise ValueError(f"JSON constant {name} is not allowed")

    try:
        metadata = json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise InvalidContent(f"the metadata is not valid UTF-8 JSON ({error})") from None
    if not isinstance(metadata, dict):
        raise InvalidContent("the metadata is not a JSON object")
    return metadata


def check_format(metadata: dict[str, Any]) -> None:
    """Reject files of another format and of a newer or unknown version."""
    if metadata.get("format") != FORMAT_NAME:
        raise InvalidContent(
            f"not an iua_widgets analysis file (format {metadata.get('format')!r}, "
            f"expected {FORMAT_NAME!r})"
        )
    version = metadata.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidContent(f"invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise InvalidContent(
            f"written in format version {version}, newer than version {FORMAT_VERSION} "
            "that this iua_widgets reads; upgrade iua-widgets to open it"
        )
    keys = set(metadata)
    if keys != TOP_LEVEL_KEYS:
        missing, extra = sorted(TOP_LEVEL_KEYS - keys), sorted(keys - TOP_LEVEL_KEYS)
        raise InvalidContent(f"metadata keys do not match version 1 (missing {missing}, unexpected {extra})")
    if not isinstance(metadata["sha256"], str) or not _SHA256.fullmatch(metadata["sha256"]):
        raise InvalidContent("the metadata has no valid sha256 content digest")
    if not isinstance(metadata["writer"], str):
        raise InvalidContent("the metadata field 'writer' is not a string")


def _integer(value: Any, field: str, minimum: int = 0, maximum: int = MAX_COUNT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidContent(f"{field} must be an integer in [{minimum}, {maximum}], got {value!r}")
    return value


def _decimals(value: Any, field: str, size: int) -> list[int]:
    if not isinstance(value, list) or len(value) != size:
        raise InvalidContent(f"{field} must be a list of {size} decimal strings")
    if not all(isinstance(text, str) and _DECIMAL.fullmatch(text) for text in value):
        raise InvalidContent(f"{field} must hold non-negative integers written as decimal strings")
    return [int(text) for text in value]


def _grid(value: Any) -> np.ndarray:
    if not isinstance(value, list) or not 2 <= len(value) <= MAX_GRID_SIZE:
        raise InvalidContent(f"grid must be a list of 2 to {MAX_GRID_SIZE} thresholds")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise InvalidContent("grid must hold numbers only")
    grid = np.array(value, dtype=np.float64)
    if not np.all(np.isfinite(grid)) or grid[0] != 0.0 or not np.all(np.diff(grid) > 0):
        raise InvalidContent("grid must be finite, start at 0 and increase strictly")
    return grid


def decode_settings(metadata: dict[str, Any]) -> AnalysisState:
    """Build the settings and counters of the analysis (no layers yet) from checked metadata."""
    for field in ("rtol", "atol"):
        value = metadata[field]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidContent(f"{field} must be a number, got {value!r}")
    try:
        rtol = validate_tolerance("rtol", metadata["rtol"])
        atol = validate_tolerance("atol", metadata["atol"])
    except ValueError as error:
        raise InvalidContent(str(error)) from None
    grid = _grid(metadata["grid"])
    if not np.any(grid == atol):
        raise InvalidContent(f"atol={atol!r} is not on the grid")
    if metadata["unit"] not in UNITS:
        raise InvalidContent(f"unit must be one of {UNITS}, got {metadata['unit']!r}")
    if metadata["per_input"] not in PER_INPUT_POLICIES:
        raise InvalidContent(
            f"per_input must be one of {PER_INPUT_POLICIES}, got {metadata['per_input']!r}"
        )
    state = AnalysisState(
        rtol=rtol,
        atol=atol,
        grid=grid,
        unit=metadata["unit"],
        channel_axis=_integer(metadata["channel_axis"], "channel_axis", -64, 64),
        per_input=metadata["per_input"],
        inputs_seen=_integer(metadata["inputs_seen"], "inputs_seen"),
        batches_seen=_integer(metadata["batches_seen"], "batches_seen"),
    )
    if metadata["expected_inputs"] is not None:
        state.expected_inputs = _integer(metadata["expected_inputs"], "expected_inputs")
    if state.batches_seen > state.inputs_seen or (state.batches_seen == 0) != (state.inputs_seen == 0):
        raise InvalidContent(
            f"batches_seen={state.batches_seen} is inconsistent with inputs_seen={state.inputs_seen}"
        )
    return state


def decode_layer(entry: Any, position: int, state: AnalysisState) -> LayerState:
    """Decode one layer entry of the metadata; its arrays are attached later."""
    if not isinstance(entry, dict) or set(entry) != LAYER_KEYS:
        raise InvalidContent(f"layer entry {position} must be an object with keys {sorted(LAYER_KEYS)}")
    name = entry["name"]
    if not isinstance(name, str):
        raise InvalidContent(f"layer entry {position} has a name that is not a string")
    shape = entry["unit_shape"]
    if not isinstance(shape, list) or len(shape) > 64:
        raise InvalidContent(f"layer {name!r}: unit_shape must be a list of at most 64 sizes")
    unit_shape = tuple(_integer(n, f"layer {name!r}: unit_shape size") for n in shape)
    if state.unit == "channel" and len(unit_shape) > 1:
        raise InvalidContent(f"layer {name!r}: a channel analysis has at most one unit axis")
    units = math.prod(unit_shape)
    inputs = _integer(entry["inputs"], f"layer {name!r}: inputs", 1, state.inputs_seen)
    if units * len(state.grid) > MAX_COUNT or units * inputs > MAX_COUNT:
        raise InvalidContent(f"layer {name!r}: {units} units over {inputs} inputs is too large")
    size = len(state.grid)
    return LayerState(
        name=name,
        unit_shape=unit_shape,
        inputs=inputs,
        nonfinite=_integer(entry["nonfinite"], f"layer {name!r}: nonfinite", 0, units * inputs),
        cumulative=np.zeros((0, 0), dtype=np.uint32),
        count_sums=_decimals(entry["count_sums"], f"layer {name!r}: count_sums", size),
        count_square_sums=_decimals(
            entry["count_square_sums"], f"layer {name!r}: count_square_sums", size
        ),
        inactive=None,
    )


def expected_arrays(state: AnalysisState) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """Map each array member to its accepted dtypes (``dtype.str``) and its exact shape."""
    expected = {}
    grid_size = len(state.grid)
    for position, layer in enumerate(state.layers):
        cumulative = ("<u4", "<i8") if layer.inputs <= UINT32_LIMIT else ("<i8",)
        expected[f"layer{position}.cumulative"] = (cumulative, (grid_size, layer.units))
        if state.per_input == "grid":
            expected[f"layer{position}.inactive"] = (("<i4", "<i8"), (layer.inputs, grid_size))
        elif state.per_input == "start":
            expected[f"layer{position}.inactive"] = (("<i8",), (layer.inputs,))
    return expected


def _row_sums(counts: np.ndarray, bound: int, axis: int, square: bool = False) -> list[int]:
    """Exact sums along ``axis`` of non-negative counts whose total is at most ``bound``."""
    if bound < 2**62:
        values = counts.astype(np.int64)
        if square:
            values = values * values
        return [int(s) for s in values.sum(axis=axis)]
    values = counts.astype(object)
    if square:
        values = values * values
    return [int(s) for s in values.sum(axis=axis)]


def check_layer(layer: LayerState, state: AnalysisState) -> None:
    """Check that the counts of one layer are consistent with each other.

    Cumulative counts lie in ``[0, inputs]`` and never decrease along the
    grid, and their row sums equal ``count_sums``. The sums obey the bounds
    of per-input counts in ``[0, units]``, so the variance is never negative.
    Per-input detail, when kept, lies in ``[0, units]``, never decreases
    along the grid and adds up to ``count_sums`` and ``count_square_sums``.
    """
    name, inputs, units = layer.name, layer.inputs, layer.units
    cumulative = layer.cumulative
    if cumulative.size:
        if cumulative.min() < 0 or cumulative.max() > inputs:
            raise InvalidContent(f"layer {name!r}: cumulative counts outside [0, {inputs}]")
        if np.any(np.diff(cumulative.astype(np.int64), axis=0) < 0):
            raise InvalidContent(f"layer {name!r}: cumulative counts decrease along the grid")
    if _row_sums(cumulative, inputs * units, axis=1) != layer.count_sums:
        raise InvalidContent(f"layer {name!r}: count_sums disagree with the cumulative counts")
    sums, squares = layer.count_sums, layer.count_square_sums
    for j in range(len(sums)):
        if j and (sums[j] < sums[j - 1] or squares[j] < squares[j - 1]):
            raise InvalidContent(f"layer {name!r}: count sums decrease along the grid")
        if sums[j] * sums[j] > inputs * squares[j] or squares[j] > units * sums[j]:
            raise InvalidContent(
                f"layer {name!r}: count_square_sums at grid index {j} is impossible for "
                f"{inputs} inputs of {units} units"
            )
    if layer.nonfinite > inputs * units - sums[-1]:
        raise InvalidContent(
            f"layer {name!r}: nonfinite={layer.nonfinite} exceeds the values that are active "
            "at every threshold"
        )
    detail = layer.inactive
    if detail is None:
        return
    if detail.size and (detail.min() < 0 or detail.max() > units):
        raise InvalidContent(f"layer {name!r}: per-input inactive counts outside [0, {units}]")
    bound = inputs * units * max(units, 1)
    if state.per_input == "grid":
        if np.any(np.diff(detail.astype(np.int64), axis=1) < 0):
            raise InvalidContent(f"layer {name!r}: per-input counts decrease along the grid")
        detail_sums = _row_sums(detail, bound, axis=0)
        detail_squares = _row_sums(detail, bound, axis=0, square=True)
    else:
        start = state.start_index
        detail_sums = _row_sums(detail[:, None], bound, axis=0)
        detail_squares = _row_sums(detail[:, None], bound, axis=0, square=True)
        sums, squares = [sums[start]], [squares[start]]
    if detail_sums != sums or detail_squares != squares:
        raise InvalidContent(
            f"layer {name!r}: per-input inactive counts disagree with count_sums or "
            "count_square_sums"
        )
