"""The fixed grid of absolute tolerances at which cached results are exact."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import numpy as np

#: Decades covered by the 1-2-5 steps of the default grid: 1e-12 up to 1e2.
GRID_DECADES = range(-12, 2)
#: Relative distance within which an atol counts as the grid value it is next to.
GRID_MATCH_RTOL = 1e-12


def validate_tolerance(name: str, value: float) -> float:
    """Return ``value`` as a float, raising ``ValueError`` unless it is finite and >= 0."""
    if isinstance(value, bool | str | bytes) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}.")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}.")
    return number


def threshold_grid(*extra: float) -> np.ndarray:
    """Build the sorted float64 grid: 0, the 1-2-5 steps from 1e-12 to 1e2, and ``extra``.

    The decimal steps are parsed from text (``float("5e-08")``), so each grid
    value is the same float64 as the literal a user types.
    """
    values = {0.0, 1e2}
    for exponent in GRID_DECADES:
        for mantissa in (1, 2, 5):
            values.add(float(f"{mantissa}e{exponent}"))
    for value in extra:
        values.add(validate_tolerance("atol", value))
    return np.array(sorted(values), dtype=np.float64)


def grid_index(grid: np.ndarray, atol: float, *, snap: bool = False) -> int:
    """Return the index of ``atol`` in ``grid``.

    An ``atol`` that is not on the grid raises ``ValueError`` naming its grid
    neighbours, unless ``snap`` is true: then the nearest grid value on a log
    scale is used (0 only for ``atol == 0``).
    """
    atol = validate_tolerance("atol", atol)
    position = int(np.searchsorted(grid, atol))
    if position < len(grid) and grid[position] == atol:
        return position
    # Values a few ulps off a grid value (5 * 10.0**-6, np.logspace output)
    # take that grid value; the results carry it in Result.atol.
    for neighbour in (position - 1, position):
        if 0 <= neighbour < len(grid) and math.isclose(
            grid[neighbour], atol, rel_tol=GRID_MATCH_RTOL, abs_tol=0.0
        ):
            return neighbour
    below = grid[position - 1] if position > 0 else None
    above = grid[position] if position < len(grid) else None
    if not snap:
        neighbours = " and ".join(repr(float(v)) for v in (below, above) if v is not None)
        raise ValueError(
            f"atol={atol!r} is not on the threshold grid, so the cache cannot give "
            f"exact results for it. The nearest grid values are {neighbours}; pass "
            "one of them, pass snap=True to use the nearest, or start a new "
            "analysis with this atol."
        )
    if above is None:
        return position - 1
    if below is None or below == 0.0:
        return position
    if math.log(atol) - math.log(below) <= math.log(above) - math.log(atol):
        return position - 1
    return position


def native_thresholds(grid: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Convert ``grid`` to ``dtype`` so that ``abs(x) <= t`` there equals the float64 test.

    For each float64 threshold ``T`` this is the largest value of ``dtype`` that
    is ``<= T``: for any ``x`` representable in ``dtype``, ``|x| <= T`` holds in
    exact arithmetic exactly when ``|x| <= t`` holds in ``dtype``. A plain cast
    would round ``T`` to nearest and could move values across the threshold.
    """
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return grid.copy()
    with np.errstate(over="ignore"):  # a huge atol becomes inf, then the max below
        native = grid.astype(dtype)
    too_large = native.astype(np.float64) > grid
    native[too_large] = np.nextafter(native[too_large], dtype.type(-np.inf))
    return native


#: Most thresholds a grid may hold; bins are numbered in one byte by the kernel.
MAX_GRID_SIZE = 250


def custom_grid(thresholds, atol: float) -> np.ndarray:
    """Build a sorted float64 grid from user ``thresholds``, plus 0 and ``atol``.

    A coarser grid than the default (say one threshold per decade) shrinks the
    cache in proportion; results are exact at its values only.
    """
    if isinstance(thresholds, str | bytes) or not isinstance(thresholds, Iterable):
        raise TypeError(
            f"grid must be a sequence of thresholds, such as grid=[1e-8, 1e-6, 1e-4], "
            f"got {thresholds!r}."
        )
    values = {0.0, validate_tolerance("atol", atol)}
    for value in thresholds:
        values.add(validate_tolerance("grid threshold", value))
    if len(values) > MAX_GRID_SIZE:
        raise ValueError(
            f"A threshold grid may hold at most {MAX_GRID_SIZE} values, got {len(values)}."
        )
    return np.array(sorted(values), dtype=np.float64)
