"""Cached statistics of one layer, exact at every threshold of the grid."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .kernels import (
    PENDING_LIMIT,
    add_cumulative,
    bin_values,
    count_moments,
    can_pend,
    flush_pending,
    from_blocks,
    new_pending,
    pending_row,
    reusable_buffer,
)

UNITS = ("element", "channel")
PER_INPUT_POLICIES = ("grid", "start", "none")
#: Largest count that the compact uint32 cache can hold before it moves to int64.
_UINT32_LIMIT = np.iinfo(np.uint32).max


def detail_dtype(units: int) -> np.dtype:
    """Narrowest integer type holding a per-input count of up to ``units`` units."""
    if units < 2**16:
        return np.dtype(np.uint16)
    if units < 2**31:
        return np.dtype(np.int32)
    return np.dtype(np.int64)


@dataclass
class BatchContribution:
    """Contribution of one batch to one layer's statistics, computed before any of it is applied."""

    inputs: int
    #: Blocked ``(blocks, thresholds + 2, block)`` counts (see kernels.bin_values),
    #: or ``None`` when they went to the layer's pending buffer.
    unit_cumulative: np.ndarray | None
    input_counts: np.ndarray  # (inputs, thresholds) int64, inactive units per input
    nonfinite: int
    magnitudes: np.ndarray  # the binned batch, kept to take pending counts back
    thresholds: np.ndarray
    applied: bool = False


#: Integers up to this magnitude are exact in float32.
FLOAT32_EXACT_INTEGERS = 2**24


def as_units(
    array: np.ndarray, unit: str, channel_axis: int, name: str, max_threshold: float = np.inf,
    scratch: dict | None = None,
) -> np.ndarray:
    """Reshape one response batch to ``(inputs, units)`` magnitudes ready for binning.

    float16 becomes float32 (exact). Integer and bool responses become
    float32 when every threshold is below 2**24: then integers up to 2**24
    are exact and larger ones round to at least 2**24, above every threshold,
    so each comparison keeps its result. Otherwise they become float64 (exact
    below 2**53). In channel mode each unit is the largest magnitude of the
    channel's elements, NaN-propagating, because a channel is inactive only
    when all its elements are. A ``scratch`` dict (one per layer) receives the
    converted values in a buffer reused from batch to batch, which spares the
    page faults of a fresh array, so the result is valid until the next call.
    """
    check_dtype(array.dtype, name)
    target = None
    if array.dtype.kind in "biu":
        exact_in_float32 = max_threshold < FLOAT32_EXACT_INTEGERS
        target = np.float32 if exact_in_float32 else np.float64
    elif array.dtype == np.float16:
        target = np.float32
    if target is not None:
        if scratch is None:
            array = array.astype(target)
        else:
            converted = reusable_buffer(scratch, "converted", array.shape, target)
            np.copyto(converted, array, casting="unsafe")
            array = converted
    inputs = array.shape[0]
    if unit == "element" or array.ndim == 1:
        return array.reshape(inputs, -1)
    axis = channel_axis if channel_axis >= 0 else array.ndim + channel_axis
    moved = np.moveaxis(np.abs(array), axis, 1)
    channels = moved.shape[1]
    # NaN-propagating max keeps NaN channels out of the inactive count.
    return moved.reshape(inputs, channels, -1).max(axis=2)


def check_dtype(dtype: np.dtype, name: str) -> None:
    """Raise ``TypeError`` unless responses of ``dtype`` can be compared exactly."""
    if dtype.kind in "biu" or dtype in (np.float16, np.float32, np.float64):
        return
    if dtype.kind == "f":
        raise TypeError(
            f"Response {name!r} has dtype {dtype}, which the engine cannot compare "
            "exactly; convert it with .astype(numpy.float64) first."
        )
    raise TypeError(
        f"Response {name!r} has dtype {dtype}; expected a numeric "
        "(float, integer or bool) array."
    )


def channel_unit_shape(shape: tuple[int, ...], channel_axis: int, name: str) -> tuple[int, ...]:
    """Return the unit shape ``(channels,)`` for a response of full ``shape``."""
    ndim = len(shape)
    if ndim == 1:
        raise ValueError(
            f"Response {name!r} has shape {tuple(shape)}: one value per input and no "
            "channel axis. Use unit='element' for it, or analyse it in a separate run."
        )
    if not -ndim <= channel_axis < ndim or channel_axis % ndim == 0:
        raise ValueError(
            f"channel_axis={channel_axis} does not name a unit axis of response "
            f"{name!r} with shape {shape}; axis 0 is the input axis. Use 1 for "
            "NCHW (PyTorch) or -1 for NHWC responses, or unit='element'."
        )
    return (shape[channel_axis],)


class LayerStats:
    """Threshold-grid cache of one layer.

    Two parts take memory independent of the number of inputs. The first is
    ``cumulative[j, u]``, the number of inputs on which unit ``u`` was within
    ``grid[j]`` of zero: uint32 until a count could pass 2**32 - 1, then
    int64, so 4 or 8 bytes per unit per grid threshold. The second is, per
    threshold, the exact sum and sum of squares of per-input inactive counts
    (Python ints).

    Per-input detail depends on ``per_input``: ``"grid"`` keeps every
    input's inactive count at every grid threshold (2 bytes per input per
    threshold for layers of fewer than 65,536 units, else 4 or 8), ``"start"`` only at the starting threshold (8 bytes per
    input) and ``"none"`` keeps none; then ``inactive`` is ``None`` and the
    standard deviation comes from the sums.

    With the compiled kernel, unit counts of recent batches wait in a uint16
    buffer (about 92 bytes per unit, outside the budget like the kernel
    buffers) and reach ``cumulative`` when it is read or the buffer is full,
    which saves a pass over the cache per batch.
    """

    def __init__(self, name, unit_shape, grid, start_index, per_input):
        self.name = name
        self.unit_shape = tuple(unit_shape)
        self.units = int(np.prod(self.unit_shape, dtype=np.int64))
        self.grid = grid
        self.start_index = start_index
        self.per_input = per_input
        self.inputs = 0
        self.nonfinite = 0
        # Allocated when first needed: until then every count may be pending.
        self._cumulative: np.ndarray | None = None
        self.count_sums = [0] * len(grid)
        self.count_square_sums = [0] * len(grid)
        self._input_counts: list[np.ndarray] = []
        # (list, pieces counted, their bytes), see _detail_nbytes.
        self._detail_counted: tuple[list, int, int] = (self._input_counts, 0, 0)
        self._pending: np.ndarray | None = None
        self._pending_inputs = 0
        # Guards the cache and the pending buffer against a read from another thread.
        self._lock = threading.Lock()

    @property
    def cumulative(self) -> np.ndarray:
        """``(G, units)`` counts of inputs within each grid threshold, all batches included."""
        with self._lock:
            self._flush_locked()
            return self._cache_locked()

    @cumulative.setter
    def cumulative(self, value: np.ndarray) -> None:
        with self._lock:
            self._cumulative = value
            self._pending = None
            self._pending_inputs = 0

    def flush(self) -> None:
        """Move the pending unit counts into ``cumulative``."""
        with self._lock:
            self._flush_locked()

    def _cache_locked(self) -> np.ndarray:
        if self._cumulative is None:
            dtype = np.int64 if self.inputs > _UINT32_LIMIT else np.uint32
            self._cumulative = np.zeros((len(self.grid), self.units), dtype=dtype)
        return self._cumulative

    def _flush_locked(self) -> None:
        if self._pending_inputs:
            flush_pending(self._cache_locked(), self._pending)
            self._pending_inputs = 0

    def compute(
        self, magnitudes: np.ndarray, thresholds: np.ndarray, scratch: dict | None = None
    ) -> BatchContribution:
        """Bin one ``(inputs, units)`` batch, to be passed to ``apply`` or ``discard``.

        Until then the batch counts in no result. ``scratch`` (one dict per
        layer) lets the kernel reuse its buffers, so the contribution is valid
        until the next ``compute`` with that dict.
        """
        inputs = magnitudes.shape[0]
        if can_pend(magnitudes, thresholds):
            with self._lock:
                if self._pending is None:
                    self._pending = new_pending(len(thresholds) + 2, self.units)
                if self._pending_inputs + inputs > PENDING_LIMIT:
                    self._flush_locked()
                unit_cumulative, input_cumulative = bin_values(
                    magnitudes, thresholds, scratch, self._pending
                )
                self._pending_inputs += inputs
        else:
            unit_cumulative, input_cumulative = bin_values(magnitudes, thresholds, scratch)
        input_counts = input_cumulative[:, : len(thresholds)]
        nonfinite = int((input_cumulative[:, -1] - input_cumulative[:, -2]).sum())
        return BatchContribution(
            inputs, unit_cumulative, input_counts, nonfinite, magnitudes, thresholds
        )

    def discard(self, part: BatchContribution) -> None:
        """Take back a computed batch that will not be applied."""
        if part.unit_cumulative is not None:
            return  # nothing of it was stored
        with self._lock:
            # Wherever its counts are now, after a flush they are in the cache.
            self._flush_locked()
            batch, _ = bin_values(part.magnitudes, part.thresholds)
            cache = self._cache_locked()
            np.subtract(cache, from_blocks(batch, self.units)[: cache.shape[0]],
                        out=cache, casting="unsafe")

    def apply(self, part: BatchContribution) -> None:
        """Add one computed batch to the statistics."""
        with self._lock:
            cache = self._cumulative
            if (cache is not None and cache.dtype == np.uint32
                    and self.inputs + part.inputs > _UINT32_LIMIT):
                self._cumulative = cache.astype(np.int64)
            if part.unit_cumulative is not None:
                add_cumulative(self._cache_locked(), part.unit_cumulative)
        counts = part.input_counts
        # Sum squares in int64 only where the sum cannot overflow; Python ints never do.
        if self.units * self.units * max(part.inputs, 1) < 2**62:
            sums, square_sums = count_moments(counts)
        else:
            sums = counts.sum(axis=0)
            square_sums = (counts.astype(object) ** 2).sum(axis=0)
        # tolist() gives Python ints, which have no fixed width to overflow.
        self.count_sums = [a + b for a, b in zip(self.count_sums, sums.tolist(), strict=True)]
        self.count_square_sums = [
            a + b for a, b in zip(self.count_square_sums, square_sums.tolist(), strict=True)
        ]
        if self.per_input == "grid":
            self._input_counts.append(counts.astype(detail_dtype(self.units)))
        elif self.per_input == "start":
            self._input_counts.append(counts[:, self.start_index].astype(np.int64))
        self.inputs += part.inputs
        self.nonfinite += part.nonfinite

    def inactive_at(self, index: int) -> np.ndarray | None:
        """Per-input inactive counts at grid threshold ``index``, or ``None`` if not kept."""
        if self.per_input == "grid":
            if not self._input_counts:
                return np.zeros(0, dtype=np.int64)
            return np.concatenate([c[:, index] for c in self._input_counts]).astype(np.int64)
        if self.per_input == "start" and index == self.start_index:
            if not self._input_counts:
                return np.zeros(0, dtype=np.int64)
            return np.concatenate(self._input_counts)
        return None

    def _detail_nbytes(self) -> int:
        # The budget check reads this on every batch, so only new pieces are summed.
        pieces = self._input_counts
        known, counted, total = self._detail_counted
        if known is not pieces or counted > len(pieces):
            counted, total = 0, 0
        total += sum(piece.nbytes for piece in pieces[counted:])
        self._detail_counted = (pieces, len(pieces), total)
        return total

    def unit_counts_at(self, index: int) -> np.ndarray:
        """Per-unit inactive counts at grid threshold ``index``, int64, in the unit shape."""
        with self._lock:
            if self._cumulative is None and self._pending_inputs:
                # Summing the pending bins spares allocating the cache for one row.
                counts = pending_row(self._pending, index, self.units)
            else:
                self._flush_locked()
                counts = self._cache_locked()[index].astype(np.int64)
        return counts.reshape(self.unit_shape)

    def nbytes(self) -> int:
        """Bytes held by the cache, per-input detail included.

        A cache not allocated yet counts as allocated, so that the figure
        does not jump when it is.
        """
        detail = self._detail_nbytes()
        cache = self._cumulative
        cache_bytes = cache.nbytes if cache is not None else len(self.grid) * self.units * 4
        return int(cache_bytes + detail)
