"""Plain-data snapshots of an engine's cache, the common currency of save, merge and reduce.

A snapshot holds copies, so it can be written to a file, sent to another
process or merged without holding the engine's lock, and turned back into an
engine that continues where the original stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .grid import grid_index, native_thresholds
from .layer import LayerStats
from .streaming import DEFAULT_MAX_CACHE_BYTES, StreamingIUA

#: Largest per-layer input count that the compact uint32 cumulative counts hold.
UINT32_LIMIT = int(np.iinfo(np.uint32).max)


def cumulative_dtype(inputs: int) -> np.dtype:
    """Return the dtype the engine uses for cumulative counts after ``inputs`` inputs."""
    return np.dtype(np.uint32 if inputs <= UINT32_LIMIT else np.int64)


@dataclass
class LayerState:
    """Cache of one layer.

    Attributes
    ----------
    name, unit_shape
        Response name and the shape of one input's units.
    inputs, nonfinite
        Inputs this layer saw and the NaN and +-inf values among them.
    cumulative
        ``(len(grid), units)`` uint32 or int64: ``cumulative[j, u]`` is the
        number of inputs on which unit ``u`` was within ``grid[j]`` of zero.
    count_sums, count_square_sums
        Per grid threshold, the exact sum and sum of squares over inputs of
        the per-input inactive counts (Python ints, unbounded).
    inactive
        Per-input inactive counts in input order: ``(inputs, len(grid))`` for
        ``per_input="grid"``, ``(inputs,)`` at the starting threshold for
        ``"start"``, ``None`` for ``"none"``.
    """

    name: str
    unit_shape: tuple[int, ...]
    inputs: int
    nonfinite: int
    cumulative: np.ndarray
    count_sums: list[int]
    count_square_sums: list[int]
    inactive: np.ndarray | None

    @property
    def units(self) -> int:
        """Units per input: the product of ``unit_shape``."""
        return int(np.prod(self.unit_shape, dtype=np.int64))


@dataclass
class AnalysisState:
    """Settings, progress counters and per-layer caches of one analysis.

    ``inputs_seen`` and ``batches_seen`` count every batch fed; a layer that
    appeared in only some batches has fewer ``inputs`` of its own.
    """

    rtol: float
    atol: float
    grid: np.ndarray
    unit: str
    channel_axis: int
    per_input: str
    inputs_seen: int = 0
    batches_seen: int = 0
    expected_inputs: int | None = None
    layers: list[LayerState] = field(default_factory=list)

    @property
    def start_index(self) -> int:
        """Index of ``atol`` in ``grid``."""
        return grid_index(self.grid, self.atol)


def engine_of(analysis: object) -> StreamingIUA:
    """Return the engine behind an ``IUA`` or a ``StreamingIUA``."""
    if isinstance(analysis, StreamingIUA):
        return analysis
    engine = getattr(analysis, "engine", None)
    if isinstance(engine, StreamingIUA):
        return engine
    raise TypeError(
        f"Expected a StreamingIUA or an IUA, got {type(analysis).__name__}. Create one "
        "with IUA.introspect(...), StreamingIUA(...) or IUA.load(path)."
    )


def capture(engine: StreamingIUA) -> AnalysisState:
    """Copy the settings and caches of ``engine`` into an ``AnalysisState``."""
    with engine._lock:
        state = AnalysisState(
            rtol=engine.rtol,
            atol=engine.atol,
            grid=engine.grid.copy(),
            unit=engine.unit,
            channel_axis=engine.channel_axis,
            per_input=engine.per_input,
            inputs_seen=int(engine.inputs_seen),
            batches_seen=int(engine.batches_seen),
            expected_inputs=engine.expected_inputs,
        )
        for name in engine.layer_names:
            state.layers.append(_capture_layer(engine.layer_stats(name), state))
    return state


def _on_host(array: Any) -> np.ndarray:
    """Convert a numpy array or a PyTorch tensor on any device to a numpy array."""
    if hasattr(array, "detach") and hasattr(array, "cpu"):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _capture_layer(layer: LayerStats, state: AnalysisState) -> LayerState:
    # Works for host layers and for device layers (engine.torch_device set),
    # whose reading interface returns numpy and whose detail is a list of tensors.
    grid_size = len(state.grid)
    pieces = [_on_host(piece) for piece in layer._input_counts]
    detail: np.ndarray | None = None
    if state.per_input == "grid":
        if pieces:
            # The file format stores int32 or int64, whatever narrower type
            # the engine keeps in memory.
            detail = np.concatenate(pieces)
            if detail.dtype.itemsize < 4:
                detail = detail.astype(np.int32)
        else:
            detail = np.zeros((0, grid_size), dtype=np.int32)
    elif state.per_input == "start":
        if pieces:
            detail = np.concatenate(pieces).astype(np.int64)
        else:
            detail = np.zeros(0, dtype=np.int64)
    inputs = int(layer.inputs)
    return LayerState(
        name=layer.name,
        unit_shape=tuple(int(n) for n in layer.unit_shape),
        inputs=inputs,
        nonfinite=int(layer.nonfinite),
        cumulative=np.array(layer.cumulative, dtype=cumulative_dtype(inputs)),
        count_sums=[int(s) for s in layer.count_sums],
        count_square_sums=[int(s) for s in layer.count_square_sums],
        inactive=detail,
    )


def restore(state: AnalysisState, *, max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES) -> StreamingIUA:
    """Build a ``StreamingIUA`` holding ``state``; it accepts further batches.

    The state's arrays are used as they are, not copied. The engine keeps its
    cache on the host (``torch_device=None``), whatever engine ``state`` came from.
    """
    engine = StreamingIUA(
        rtol=state.rtol,
        atol=state.atol,
        unit=state.unit,
        channel_axis=state.channel_axis,
        per_input=state.per_input,
        max_cache_bytes=max_cache_bytes,
    )
    if not np.array_equal(engine.grid, state.grid):
        # The grid differs from this version's default, for example in a file
        # written by another version. Results and new batches use the saved grid.
        engine.grid = np.array(state.grid, dtype=np.float64)
        engine.start_index = grid_index(engine.grid, engine.atol)
        engine._thresholds = {
            np.dtype(np.float32): native_thresholds(engine.grid, np.float32),
            np.dtype(np.float64): engine.grid,
        }
    for saved in state.layers:
        layer = LayerStats(
            saved.name, saved.unit_shape, engine.grid, engine.start_index, state.per_input
        )
        layer.inputs = saved.inputs
        layer.nonfinite = saved.nonfinite
        layer.cumulative = saved.cumulative
        layer.count_sums = list(saved.count_sums)
        layer.count_square_sums = list(saved.count_square_sums)
        if saved.inactive is not None and len(saved.inactive):
            layer._input_counts = [saved.inactive]
        engine._layers[saved.name] = layer
    engine.inputs_seen = state.inputs_seen
    engine.batches_seen = state.batches_seen
    engine.expected_inputs = state.expected_inputs
    return engine
