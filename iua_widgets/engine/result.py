"""Per-layer result of Inactive Unit Analysis at one threshold."""

from __future__ import annotations

from dataclasses import dataclass

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
