"""Shared helpers for the save, merge, distributed and Dask tests: data and exact comparison."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from iua_widgets import StreamingIUA
from iua_widgets.engine import threshold_grid
from iua_widgets.engine.state import engine_of

LAYERS = {"conv": (3, 4, 4), "fc": (6,)}


def make_batches(
    seed: int,
    sizes: list[int],
    layers: dict[str, tuple[int, ...]] = LAYERS,
    dtype: type = np.float32,
) -> list[dict[str, np.ndarray]]:
    """Random batches with zeros, values exactly on grid thresholds, NaN and inf."""
    rng = np.random.default_rng(seed)
    grid = threshold_grid()
    batches = []
    for size in sizes:
        batch = {}
        for name, shape in layers.items():
            full = (size, *shape)
            values = rng.normal(size=full) * 10.0 ** rng.integers(-13, 3, size=full)
            values[rng.random(full) < 0.3] = 0.0
            on_grid = rng.random(full) < 0.1
            values[on_grid] = rng.choice(grid, size=int(on_grid.sum())) * rng.choice([-1, 1])
            values[rng.random(full) < 0.01] = np.nan
            values[rng.random(full) < 0.01] = -np.inf
            batch[name] = values.astype(dtype)
        batches.append(batch)
    return batches


def feed(engine: StreamingIUA, batches: list[dict[str, np.ndarray]]) -> StreamingIUA:
    """Feed ``batches`` in order; the NaN and inf of ``make_batches`` are intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Response .* NaN or infinite", RuntimeWarning)
        for batch in batches:
            engine.update(batch)
    return engine


def run(batches: list[dict[str, np.ndarray]], **settings) -> StreamingIUA:
    """One engine fed ``batches`` in order."""
    return feed(StreamingIUA(**settings), batches)


def _same_value(actual, expected) -> bool:
    if expected is None or actual is None:
        return actual is None and expected is None
    if isinstance(expected, np.ndarray):
        return (
            isinstance(actual, np.ndarray)
            and actual.dtype == expected.dtype
            and actual.shape == expected.shape
            and np.array_equal(actual, expected, equal_nan=expected.dtype.kind == "f")
        )
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(actual, float) and math.isnan(actual)
    return type(actual) is type(expected) and actual == expected


def assert_same_analysis(actual, expected) -> None:
    """Assert equal settings, layers and results at every grid threshold, bit for bit."""
    got, want = engine_of(actual), engine_of(expected)
    assert got.layer_names == want.layer_names
    assert np.array_equal(got.grid, want.grid)
    for setting in ("rtol", "atol", "unit", "channel_axis", "per_input", "inputs_seen"):
        assert getattr(got, setting) == getattr(want, setting), setting
    for atol in want.grid:
        got_results = got.results_at(atol=float(atol))
        want_results = want.results_at(atol=float(atol))
        for name, result in want_results.items():
            for field in dataclasses.fields(result):
                a = getattr(got_results[name], field.name)
                b = getattr(result, field.name)
                assert _same_value(a, b), f"{name}.{field.name} at atol={atol}: {a!r} != {b!r}"
