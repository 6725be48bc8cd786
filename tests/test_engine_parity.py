"""The engine against DNIKit 2.0.0 and brute-force numpy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from iua_widgets import IUA, StreamingIUA
from iua_widgets.engine import threshold_grid

from .reference import brute_force, dnikit_producer, split

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from dnikit.introspectors import IUA as DNIKitIUA


def near_threshold_data(seed: int, shapes: dict[str, tuple[int, ...]], inputs: int):
    """float64 ReLU-like responses with exact zeros and values on and around thresholds."""
    rng = np.random.default_rng(seed)
    grid = threshold_grid()
    arrays = {}
    for name, shape in shapes.items():
        values = rng.standard_normal((inputs, *shape))
        values[values < 0] = 0.0
        flat = values.reshape(-1)
        picks = rng.choice(flat.size, size=flat.size // 3, replace=False)
        on_grid = rng.choice(grid, size=picks.size)
        nudge = rng.choice([-1, 0, 1], size=picks.size)
        near = np.where(nudge < 0, np.nextafter(on_grid, -np.inf), on_grid)
        near = np.where(nudge > 0, np.nextafter(on_grid, np.inf), near)
        flat[picks] = near * rng.choice([-1.0, 1.0], size=picks.size)
        arrays[name] = values
    return arrays


SHAPES = {"dense": (17,), "conv": (3, 4, 5), "scalar": ()}


@pytest.mark.parametrize("batch_size", [1, 7, 32, 100])
@pytest.mark.parametrize("form", ["dnikit", "mapping", "iterable"])
def test_introspect_matches_dnikit(batch_size, form):
    arrays = near_threshold_data(batch_size, SHAPES, inputs=100)
    batches = split(arrays, batch_size)
    atol = 1e-8
    expected = DNIKitIUA.introspect(dnikit_producer(batches), batch_size=batch_size, atol=atol)
    producer = {
        "dnikit": dnikit_producer(batches),
        "mapping": arrays,
        "iterable": iter(batches),
    }[form]
    ours = IUA.introspect(producer, batch_size=batch_size, atol=atol)
    assert set(ours.results) == set(expected.results)
    for name, want in expected.results.items():
        got = ours.results[name]
        np.testing.assert_array_equal(got.inactive, np.asarray(want.inactive))
        np.testing.assert_array_equal(got.unit_inactive_count, np.asarray(want.unit_inactive_count))
        assert got.unit_inactive_count.shape == np.asarray(want.unit_inactive_count).shape
        np.testing.assert_array_equal(
            got.unit_inactive_proportion, np.asarray(want.unit_inactive_proportion)
        )
        assert got.mean_inactive == want.mean_inactive
        assert got.std_inactive == want.std_inactive


@pytest.mark.parametrize("atol", [0.0, 1e-12, 5e-9, 1e-8, 2e-3, 1.0, 100.0])
def test_results_at_equal_fresh_run(atol):
    arrays = near_threshold_data(3, SHAPES, inputs=64)
    streamed = IUA.introspect(arrays, batch_size=16, atol=1e-8)
    fresh = IUA.introspect(arrays, batch_size=16, atol=atol)
    for name, want in fresh.results.items():
        got = streamed.results_at(atol=atol)[name]
        np.testing.assert_array_equal(got.inactive, want.inactive)
        np.testing.assert_array_equal(got.unit_inactive_count, want.unit_inactive_count)
        assert got.mean_inactive == want.mean_inactive
        assert got.std_inactive == want.std_inactive
        assert got.dead_units == want.dead_units


def test_results_at_every_grid_threshold_matches_dnikit():
    arrays = near_threshold_data(11, {"conv": (2, 3, 3), "dense": (9,)}, inputs=40)
    batches = split(arrays, 8)
    engine = StreamingIUA(atol=1e-8)
    for batch in batches:
        engine.update(batch)
    for atol in engine.grid:
        expected = DNIKitIUA.introspect(dnikit_producer(batches), atol=float(atol)).results
        for name, got in engine.results_at(atol=float(atol)).items():
            want = expected[name]
            np.testing.assert_array_equal(got.unit_inactive_count, np.asarray(want.unit_inactive_count))
            np.testing.assert_array_equal(got.inactive, np.asarray(want.inactive))
            assert got.std_inactive == want.std_inactive


@pytest.mark.parametrize("unit,channel_axis", [("element", 1), ("channel", 1), ("channel", -1)])
def test_engine_matches_brute_force(unit, channel_axis):
    arrays = near_threshold_data(5, {"conv": (3, 4, 2), "dense": (6,)}, inputs=50)
    if unit == "channel":
        arrays = {"conv": arrays["conv"]}
    batches = split(arrays, 9)
    engine = StreamingIUA(atol=2e-8, unit=unit, channel_axis=channel_axis)
    for batch in batches:
        engine.update(batch)
    for atol in (0.0, 1e-8, 2e-8, 0.5):
        reference = brute_force(batches, atol, unit, channel_axis)
        for name, got in engine.results_at(atol=atol).items():
            want = reference[name]
            np.testing.assert_array_equal(got.inactive, want["inactive"])
            np.testing.assert_array_equal(got.unit_inactive_count, want["unit"])
            assert got.inputs == want["inputs"]
            dead = int(np.count_nonzero(want["unit"] == want["inputs"]))
            assert got.dead_units == dead


def test_float32_compared_against_exact_tolerance():
    # 1e-8 is not a float32; DNIKit compares float32 data against the
    # rounded tolerance, the engine against the exact float64 one.
    tolerance = np.float64(1e-8)
    just_above = np.nextafter(np.float32(tolerance), np.float32(np.inf))
    rounded = np.float32(tolerance)
    values = np.array([[rounded, just_above, -rounded, 0.0]], dtype=np.float32)
    engine = StreamingIUA(atol=1e-8)
    engine.update({"a": values})
    expected = np.abs(values.astype(np.float64)) <= tolerance
    np.testing.assert_array_equal(
        engine.results["a"].unit_inactive_count, expected[0].astype(np.int64)
    )
