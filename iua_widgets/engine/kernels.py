"""Hot loops that bin response values against the threshold grid.

Every kernel takes a 2-D ``(inputs, units)`` array of float32 or float64
magnitudes-to-be and the grid converted to that dtype by
``native_thresholds``, and returns, for one batch:

- ``unit_hist``: ``(bins, units)`` uint32, how many inputs put unit ``u`` in
  bin ``k``, where bin ``k < len(grid)`` means ``grid[k-1] < |x| <= grid[k]``
  and the last bin holds values above every threshold, NaN and +-inf;
- ``input_hist``: ``(inputs, bins)`` int64, the same per input;
- ``nonfinite``: the number of NaN and +-inf values.

The numba kernel is used when numba imports; otherwise a numpy kernel gives
the same numbers more slowly, after a one-time warning.
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np

logger = logging.getLogger(__name__)

try:
    import numba
except ImportError:  # pragma: no cover - exercised by forcing the numpy path
    numba = None


def bin_numpy(x: np.ndarray, thresholds: np.ndarray):
    """Bin ``x`` with numpy only (``searchsorted`` and ``bincount``)."""
    inputs, units = x.shape
    bins = len(thresholds) + 1
    magnitude = np.abs(x)
    # searchsorted(side="left") counts thresholds strictly below |x|, which is
    # the first k with |x| <= thresholds[k]; NaN sorts after every threshold.
    k = np.searchsorted(thresholds, magnitude, side="left")
    unit_index = k * units + np.arange(units)
    unit_hist = np.bincount(unit_index.ravel(), minlength=bins * units)
    unit_hist = unit_hist.reshape(bins, units).astype(np.uint32)
    input_index = np.arange(inputs)[:, None] * bins + k
    input_hist = np.bincount(input_index.ravel(), minlength=inputs * bins)
    input_hist = input_hist.reshape(inputs, bins).astype(np.int64)
    nonfinite = int(np.count_nonzero(~np.isfinite(magnitude)))
    return unit_hist, input_hist, nonfinite


if numba is not None:

    @numba.njit(cache=True, nogil=True, parallel=True, fastmath=False)
    def _bin_numba_kernel(x, thresholds, unit_hist, chunk_input_hist, chunk_nonfinite):
        inputs, units = x.shape
        count = thresholds.shape[0]
        chunks = chunk_input_hist.shape[0]
        step = (units + chunks - 1) // chunks
        first = thresholds[0]
        for c in numba.prange(chunks):
            start = c * step
            stop = min(units, start + step)
            nonfinite = 0
            for i in range(inputs):
                row = x[i]
                for u in range(start, stop):
                    a = abs(row[u])
                    if a <= first:
                        k = 0
                    else:
                        # Binary search for the first threshold >= a; NaN
                        # fails every comparison and lands in the last bin.
                        lo = 1
                        hi = count
                        while lo < hi:
                            mid = (lo + hi) >> 1
                            if thresholds[mid] < a:
                                lo = mid + 1
                            elif thresholds[mid] >= a:
                                hi = mid
                            else:
                                lo = count
                                hi = count
                        k = lo
                        if k == count and not (a < np.inf):
                            nonfinite += 1
                    unit_hist[k, u] += 1
                    chunk_input_hist[c, i, k] += 1
            chunk_nonfinite[c] = nonfinite

    def bin_numba(x: np.ndarray, thresholds: np.ndarray):
        """Bin ``x`` with the compiled kernel, parallel over chunks of units."""
        inputs, units = x.shape
        bins = len(thresholds) + 1
        chunks = max(1, min(units, 4 * numba.get_num_threads()))
        unit_hist = np.zeros((bins, units), dtype=np.uint32)
        chunk_input_hist = np.zeros((chunks, inputs, bins), dtype=np.int64)
        chunk_nonfinite = np.zeros(chunks, dtype=np.int64)
        _bin_numba_kernel(x, thresholds, unit_hist, chunk_input_hist, chunk_nonfinite)
        return unit_hist, chunk_input_hist.sum(axis=0), int(chunk_nonfinite.sum())

else:  # pragma: no cover
    bin_numba = None


_warned_fallback = False


def bin_values(x: np.ndarray, thresholds: np.ndarray):
    """Bin ``x`` with the fastest available kernel (see the module docstring)."""
    global _warned_fallback
    use_numpy = os.environ.get("IUA_WIDGETS_KERNEL", "") == "numpy"
    if bin_numba is not None and not use_numpy:
        return bin_numba(np.ascontiguousarray(x), thresholds)
    if bin_numba is None and not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            "numba is not importable, so iua_widgets bins responses with its "
            "slower numpy kernel (same results). Install numba for full speed.",
            RuntimeWarning,
            stacklevel=3,
        )
    return bin_numpy(x, thresholds)
