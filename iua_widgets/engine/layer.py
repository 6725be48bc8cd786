"""Cached statistics of one layer, exact at every threshold of the grid."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from .atomic import deferred_interrupt
from .kernels import (
    bin_prefix,
    bin_values,
    can_add_to_bins,
    count_moments,
    from_blocks,
    new_bin_counts,
    reusable_buffer,
    to_blocks,
)

UNITS = ("element", "channel")
PER_INPUT_POLICIES = ("grid", "start", "none")
#: Largest count that the compact uint32 cache can hold before it moves to int64.
_UINT32_LIMIT = np.iinfo(np.uint32).max


def cache_bytes_per_unit(grid_size: int) -> int:
    """Bytes per unit of a layer's per-bin counts: uint16 low and high parts, grid size + 2 bins."""
    return 4 * (grid_size + 2)


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
    #: or ``None`` when the kernel added them to the layer's bins.
    unit_cumulative: np.ndarray | None
    input_counts: np.ndarray  # (inputs, thresholds) int64, inactive units per input
    nonfinite: int
    magnitudes: np.ndarray  # the binned batch, kept to take its counts back
    thresholds: np.ndarray
    #: With counts in the layer's bins: whether it is applied or discarded.
    settled: bool = False


def _contribution(inputs, unit_cumulative, input_cumulative, magnitudes, thresholds):
    input_counts = input_cumulative[:, : len(thresholds)]
    nonfinite = int((input_cumulative[:, -1] - input_cumulative[:, -2]).sum())
    return BatchContribution(
        inputs, unit_cumulative, input_counts, nonfinite, magnitudes, thresholds
    )


def _per_bin(unit_cumulative: np.ndarray) -> np.ndarray:
    """Turn blocked running sums over bins into int64 counts per bin."""
    return np.diff(unit_cumulative.astype(np.int64), axis=1, prepend=0)


def _rebinned(part: BatchContribution) -> np.ndarray:
    """Bin a part's batch again and return its int64 counts per bin, blocked."""
    unit_cumulative, _ = bin_values(part.magnitudes, part.thresholds)
    return _per_bin(unit_cumulative)


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
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
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
    elements = math.prod(moved.shape[2:])
    if elements == 0:  # every element of a channel without elements is inactive
        return np.zeros((inputs, channels), dtype=moved.dtype)
    # NaN-propagating max keeps NaN channels out of the inactive count.
    return moved.reshape(inputs, channels, elements).max(axis=2)


def check_dtype(dtype: np.dtype, name: str) -> None:
    """Raise ``TypeError`` unless responses of ``dtype`` can be compared exactly."""
    if dtype.kind in "biu" or dtype.newbyteorder("=") in (np.float16, np.float32, np.float64):
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


#: Bits of a count kept in the uint16 low part, so a low count plus a batch of
#: up to 2**15 inputs stays within uint16.
_CARRY_BITS = 15
_LOW_MASK = (1 << _CARRY_BITS) - 1
#: Largest count a uint16 low part may reach.
_LOW_LIMIT = np.iinfo(np.uint16).max
#: Largest total count the uint16 high part can represent.
_HIGH16_LIMIT = (np.iinfo(np.uint16).max << _CARRY_BITS) + _LOW_MASK


class LayerStats:
    """Threshold-grid cache of one layer.

    Two parts take memory independent of the number of inputs. The first is,
    per unit and bin of the grid, the number of inputs on which the unit fell
    in the bin, kept in two uint16 arrays in the kernels' blocked layout: the
    compiled kernel adds to the low part, and every 2**15 inputs or so the
    counts past 2**15 carry into the high part (it turns int64 past about
    2**31 inputs). That is 4 bytes per unit per bin, 184 B per unit with the
    default grid, and the high part is allocated at the first carry.
    ``cumulative[j, u]``, the number of inputs on which unit ``u`` was within
    ``grid[j]`` of zero, is computed from them when read. The second part is,
    per threshold, the exact sum and sum of squares of per-input inactive
    counts (Python ints).

    Per-input detail depends on ``per_input``: ``"grid"`` keeps every
    input's inactive count at every grid threshold (2 bytes per input per
    threshold for layers of fewer than 65,536 units, else 4 or 8),
    ``"start"`` only at the starting threshold (8 bytes per input) and
    ``"none"`` keeps none; then ``inactive`` is ``None`` and the standard
    deviation comes from the sums.
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
        self.count_sums = [0] * len(grid)
        self.count_square_sums = [0] * len(grid)
        self._input_counts: list[np.ndarray] = []
        # (list, pieces counted, their bytes), see _detail_nbytes.
        self._detail_counted: tuple[list, int, int] = (self._input_counts, 0, 0)
        # Per-bin counts are high * 2**15 + low. Both are None until first needed.
        self._low: np.ndarray | None = None
        self._high: np.ndarray | None = None
        self._low_bound = 0  # no low count is above this
        self._count_bound = 0  # no total count is above this, computed batches included
        # Guards the counts against a read from another thread.
        self._lock = threading.Lock()
        # Parts computed into the bins, not applied or discarded yet: reads leave them out.
        self._unsettled: list[BatchContribution] = []

    # -- per-bin counts ------------------------------------------------------

    def _parts_locked(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self._low is None:
            self._low = new_bin_counts(len(self.grid) + 2, self.units)
        return self._low, self._high

    def _carry_locked(self) -> None:
        """Move the low counts past 2**15 into the high part."""
        low, high = self._parts_locked()
        if high is None:
            high = self._high = np.zeros_like(low)
        if high.dtype == np.uint16 and self._count_bound > _HIGH16_LIMIT:
            high = self._high = high.astype(np.int64)
        np.add(high, low >> _CARRY_BITS, out=high, casting="unsafe")
        low &= _LOW_MASK
        self._low_bound = min(self._low_bound, _LOW_MASK)

    def _add_bins_locked(self, per_bin: np.ndarray) -> None:
        """Add (or, negative, take back) blocked int64 per-bin counts exactly."""
        low, high = self._parts_locked()
        total = low.astype(np.int64) + per_bin
        if high is not None:
            total += high.astype(np.int64) << _CARRY_BITS
        new_high = total >> _CARRY_BITS
        if self._count_bound <= _HIGH16_LIMIT and (high is None or high.dtype == np.uint16):
            new_high = new_high.astype(np.uint16)
        new_low = (total & _LOW_MASK).astype(np.uint16)
        # New arrays rather than writes in place, so a snapshot keeps the old ones.
        self._low, self._high = new_low, new_high
        self._low_bound = _LOW_MASK

    def _bin_totals_locked(self) -> np.ndarray:
        low, high = self._parts_locked()
        total = low.astype(np.int64)
        if high is not None:
            total += high.astype(np.int64) << _CARRY_BITS
        return total

    def _applied_totals_locked(self) -> np.ndarray:
        totals = self._bin_totals_locked()
        for part in self._unsettled:
            # Only while another thread is inside update: bin the batch again.
            totals -= _rebinned(part)
        return totals

    @property
    def cumulative(self) -> np.ndarray:
        """``(G, units)`` counts of inputs within each grid threshold, computed from the bins.

        uint32, or int64 once the layer has more than 2**32 - 1 inputs.
        """
        with self._lock:
            totals = np.cumsum(self._applied_totals_locked(), axis=1)
        dtype = np.int64 if self.inputs > _UINT32_LIMIT else np.uint32
        return from_blocks(totals, self.units)[: len(self.grid)].astype(dtype)

    @cumulative.setter
    def cumulative(self, value: np.ndarray) -> None:
        counts = np.asarray(value, dtype=np.int64)
        per_bin = np.zeros((len(self.grid) + 2, self.units), dtype=np.int64)
        per_bin[: len(self.grid)] = np.diff(counts, axis=0, prepend=0)
        with self._lock:
            self._low = self._high = None
            self._low_bound = 0
            self._count_bound = int(counts.max(initial=0))
            self._add_bins_locked(to_blocks(per_bin))

    # -- batches -------------------------------------------------------------

    def compute(
        self, magnitudes: np.ndarray, thresholds: np.ndarray, scratch: dict | None = None
    ) -> BatchContribution:
        """Bin one ``(inputs, units)`` batch, to be passed to ``apply`` or ``discard``.

        With the compiled kernel the unit counts go straight to the layer's
        bins, and reads leave them out until ``apply``, or ``discard`` takes
        them back. ``scratch`` (one dict per layer) lets the kernel reuse its
        buffers, so the contribution is valid until the next ``compute`` with
        that dict.
        """
        inputs = magnitudes.shape[0]
        if not can_add_to_bins(magnitudes, thresholds):
            unit_cumulative, input_cumulative = bin_values(magnitudes, thresholds, scratch)
        else:
            pieces = []
            # Ctrl-C waits until the counts are in, so the caller gets the part
            # it needs to take them back.
            with deferred_interrupt(), self._lock:
                self._count_bound += inputs
                step = 1 << _CARRY_BITS
                for first in range(0, inputs, step):
                    piece = magnitudes[first : first + step]
                    if self._low_bound + len(piece) > _LOW_LIMIT:
                        self._carry_locked()
                    low, _ = self._parts_locked()
                    _, piece_cumulative = bin_values(piece, thresholds, scratch, low)
                    self._low_bound += len(piece)
                    pieces.append(piece_cumulative if inputs <= step else piece_cumulative.copy())
                input_cumulative = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
                part = _contribution(inputs, None, input_cumulative, magnitudes, thresholds)
                self._unsettled.append(part)
            return part
        return _contribution(inputs, unit_cumulative, input_cumulative, magnitudes, thresholds)

    def discard(self, part: BatchContribution) -> None:
        """Take back a computed batch that is not applied (or was restored away)."""
        if part.unit_cumulative is not None or part.settled:
            return  # nothing of it is in the bins
        per_bin = _rebinned(part)
        with self._lock:
            self._add_bins_locked(-per_bin)
            self._count_bound -= part.inputs
            self._settle_locked(part)

    def _settle_locked(self, part: BatchContribution) -> None:
        part.settled = True
        self._unsettled.remove(part)

    def snapshot(self) -> tuple:
        """Return the state that ``restore`` puts back, taken before an ``apply``."""
        return (self.inputs, self.nonfinite, self.count_sums, self.count_square_sums,
                len(self._input_counts), self._low, self._high, self._low_bound,
                self._count_bound)

    def restore(self, state: tuple, part: BatchContribution) -> None:
        """Undo ``apply(part)`` made since ``snapshot`` returned ``state``.

        The part counts as computed again, so ``discard`` takes it back.
        """
        (self.inputs, self.nonfinite, self.count_sums, self.count_square_sums, pieces,
         low, high, low_bound, count_bound) = state
        del self._input_counts[pieces:]
        with self._lock:
            if part.unit_cumulative is None:
                if part.settled:
                    part.settled = False
                    self._unsettled.append(part)
            else:
                # apply replaced the bins (see _add_bins_locked), so these are untouched.
                self._low, self._high = low, high
                self._low_bound, self._count_bound = low_bound, count_bound

    def apply(self, part: BatchContribution) -> None:
        """Add one computed batch to the statistics."""
        counts = part.input_counts
        # Everything that allocates comes first, so a failure leaves the layer as it was.
        # Sum squares in int64 only where the sum cannot overflow; Python ints never do.
        if self.units * self.units * max(part.inputs, 1) < 2**62:
            sums, square_sums = count_moments(counts)
        else:
            sums = counts.sum(axis=0)
            square_sums = (counts.astype(object) ** 2).sum(axis=0)
        # tolist() gives Python ints, which have no fixed width to overflow.
        count_sums = [a + b for a, b in zip(self.count_sums, sums.tolist(), strict=True)]
        count_square_sums = [
            a + b for a, b in zip(self.count_square_sums, square_sums.tolist(), strict=True)
        ]
        detail = None
        if self.per_input == "grid":
            detail = counts.astype(detail_dtype(self.units))
        elif self.per_input == "start":
            detail = counts[:, self.start_index].astype(np.int64)
        with self._lock:
            if part.unit_cumulative is not None:
                per_bin = _per_bin(part.unit_cumulative)
                self._count_bound += part.inputs
                self._add_bins_locked(per_bin)
            else:
                self._settle_locked(part)
            self.count_sums, self.count_square_sums = count_sums, count_square_sums
            if detail is not None:
                self._input_counts.append(detail)
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
            if self._unsettled:
                counts = np.cumsum(self._applied_totals_locked()[:, : index + 1], axis=1)
                counts = counts[:, index].reshape(-1)[: self.units]
            else:
                low, high = self._parts_locked()
                counts = bin_prefix(low, high, index, _CARRY_BITS)[: self.units]
        return counts.reshape(self.unit_shape)

    def nbytes(self) -> int:
        """Bytes held by the per-bin counts and the per-input detail.

        The counts take 4 bytes per unit per bin from the start, so that the
        figure does not jump when the high part is allocated, and 10 once the
        high part turns int64.
        """
        bins = len(self.grid) + 2
        high = self._high
        high_bytes = 2 if high is None or high.dtype == np.uint16 else high.itemsize
        return int((2 + high_bytes) * bins * self.units + self._detail_nbytes())
