"""Per-layer result of Inactive Unit Analysis at one threshold."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Result:
    """Inactive Unit Analysis of one response (layer) at one ``(rtol, atol)``.

    The first five fields carry DNIKit 2.0.0's names and values; arrays
    replace DNIKit's lists and index the same way.

    Attributes
    ----------
    mean_inactive, std_inactive
        Mean and population standard deviation (ddof=0) of ``inactive``.
    inactive
        Number of inactive units for each input (int64), or ``None`` when the
        analysis kept no per-input detail at this threshold.
    unit_inactive_count
        Number of inputs on which each unit was inactive (int64, unit shape).
    unit_inactive_proportion
        ``unit_inactive_count`` divided by the number of inputs this layer saw.
    units, inputs
        Units per input and inputs seen by this layer.
    dead_units, dead_fraction
        Units inactive on every input, as a count and a fraction of ``units``.
    mean_inactive_fraction
        ``mean_inactive / units``, comparable across layers of different sizes.
    nonfinite
        Number of NaN and +-inf response values seen; they count as active.
    atol, rtol
        The tolerances of this result. ``rtol`` has no effect against zero.
    """

    mean_inactive: float
    std_inactive: float
    inactive: np.ndarray | None
    unit_inactive_count: np.ndarray
    unit_inactive_proportion: np.ndarray
    units: int
    inputs: int
    dead_units: int
    dead_fraction: float
    mean_inactive_fraction: float
    nonfinite: int
    atol: float
    rtol: float
    unit_shape: tuple[int, ...] = ()


def layer_result(layer: Any, grid: np.ndarray, index: int, rtol: float) -> Result:
    """Build the ``Result`` of one layer's cache at grid threshold ``index``."""
    counts = layer.unit_counts_at(index)
    inputs = layer.inputs
    inactive = layer.inactive_at(index)
    if inactive is not None and len(inactive):
        # Same numpy reductions as DNIKit, so the floats match bit for bit.
        mean = float(np.mean(inactive))
        std = float(np.std(inactive))
    else:
        mean, std = mean_std_from_sums(
            layer.count_sums[index], layer.count_square_sums[index], inputs
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        proportion = counts / inputs if inputs else np.full(counts.shape, np.nan)
    dead = int(np.count_nonzero(counts == inputs)) if inputs else 0
    units = layer.units
    return Result(
        mean_inactive=mean,
        std_inactive=std,
        inactive=inactive,
        unit_inactive_count=counts,
        unit_inactive_proportion=proportion,
        units=units,
        inputs=inputs,
        dead_units=dead,
        dead_fraction=dead / units if units else math.nan,
        mean_inactive_fraction=mean / units if units else math.nan,
        nonfinite=layer.nonfinite,
        atol=float(grid[index]),
        rtol=rtol,
        unit_shape=layer.unit_shape,
    )


def mean_std_from_sums(total: int, square_total: int, inputs: int) -> tuple[float, float]:
    """Mean and population standard deviation from exact integer sums."""
    if inputs == 0:
        return math.nan, math.nan
    variance = Fraction(inputs * square_total - total * total, inputs * inputs)
    return total / inputs, math.sqrt(float(variance))
