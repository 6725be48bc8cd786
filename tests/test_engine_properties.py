"""Property-based checks of the engine against brute-force numpy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from iua_widgets import StreamingIUA
from iua_widgets.engine import kernels, threshold_grid
from iua_widgets.engine.grid import native_thresholds

from .reference import brute_force

GRID = threshold_grid()
DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.bool_]


def special_floats(dtype):
    """Values on and next to every grid threshold, -0.0, subnormals, NaN and +-inf."""
    info = np.finfo(dtype)
    on_grid = GRID.astype(dtype)
    values = [
        *on_grid,
        *np.nextafter(on_grid, dtype(np.inf)),
        *np.nextafter(on_grid, dtype(-np.inf)),
        dtype(-0.0),
        info.smallest_subnormal,
        info.smallest_normal,
        dtype(np.nan),
        dtype(np.inf),
        dtype(-np.inf),
    ]
    return st.sampled_from(values).map(lambda v: dtype(v) * dtype(1))


def elements(dtype):
    if dtype is np.bool_:
        return st.booleans()
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return st.integers(-3, 3) | st.integers(int(info.min), int(info.max))
    return special_floats(dtype) | st.floats(width=np.finfo(dtype).bits, allow_nan=True)


@st.composite
def streams(draw):
    dtype = draw(st.sampled_from(DTYPES))
    unit_shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
    inputs = draw(st.integers(1, 12))
    array = draw(hnp.arrays(dtype, (inputs, *unit_shape), elements=elements(dtype)))
    # Zero-heavy batches, as ReLU gives, take the kernel that skips zeros.
    zero_share = draw(st.sampled_from([0.0, 0.5, 0.9]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    array[rng.random(array.shape) < zero_share] = 0
    cuts = sorted(draw(st.lists(st.integers(0, inputs), max_size=4)))
    bounds = [0, *cuts, inputs]
    batches = [{"layer": array[a:b]} for a, b in zip(bounds, bounds[1:])]
    atol = draw(st.sampled_from(list(GRID)))
    return dtype, batches, atol


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.sampled_from(["element", "channel"]))
def test_engine_equals_brute_force(case, unit):
    dtype, batches, atol = case
    shape = batches[0]["layer"].shape
    if unit == "channel" and len(shape) < 2:
        unit = "element"
    engine = StreamingIUA(atol=1e-8, unit=unit)
    for batch in batches:
        engine.update(batch)
    with np.errstate(invalid="ignore", over="ignore"):
        want = brute_force(batches, atol, unit)["layer"]
    got = engine.results_at(atol=atol)["layer"]
    np.testing.assert_array_equal(got.inactive, want["inactive"])
    np.testing.assert_array_equal(got.unit_inactive_count, want["unit"])
    assert got.unit_inactive_count.dtype == np.int64
    assert got.inputs == want["inputs"]
    if dtype in (np.float16, np.float32, np.float64):
        total = sum(np.count_nonzero(~np.isfinite(b["layer"])) for b in batches)
        assert got.nonfinite == total


@settings(max_examples=60, deadline=None)
@given(streams(), st.randoms(use_true_random=False))
def test_split_order_and_layout_do_not_matter(case, random):
    _, batches, atol = case
    whole = np.concatenate([b["layer"] for b in batches])
    one = StreamingIUA()
    one.update({"layer": whole, "copy": whole.copy()})
    many = StreamingIUA()
    for batch in batches:
        strided = np.asfortranarray(batch["layer"])
        order = [("copy", batch["layer"][::-1][::-1]), ("layer", strided)]
        random.shuffle(order)
        many.update(dict(order))
    for name in ("layer", "copy"):
        a = one.results_at(atol=atol)[name]
        b = many.results_at(atol=atol)[name]
        np.testing.assert_array_equal(a.unit_inactive_count, b.unit_inactive_count)
        np.testing.assert_array_equal(a.inactive, b.inactive)
        assert a.std_inactive == b.std_inactive


@settings(max_examples=60, deadline=None)
@given(streams())
def test_numpy_kernel_equals_compiled(case):
    import os

    _, batches, atol = case
    compiled = StreamingIUA()
    fallback = StreamingIUA()
    for batch in batches:
        compiled.update(batch)
    os.environ["IUA_WIDGETS_KERNEL"] = "numpy"
    try:
        for batch in batches:
            fallback.update(batch)
    finally:
        del os.environ["IUA_WIDGETS_KERNEL"]
    a = compiled.results_at(atol=atol)["layer"]
    b = fallback.results_at(atol=atol)["layer"]
    np.testing.assert_array_equal(a.unit_inactive_count, b.unit_inactive_count)
    np.testing.assert_array_equal(a.inactive, b.inactive)
    assert a.nonfinite == b.nonfinite


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("zero_share", [0.0, 0.3, 0.5, 0.95, 1.0])
def test_zero_heavy_batches_equal_brute_force(dtype, zero_share):
    rng = np.random.default_rng(7)
    shape = (120, 777)  # several unit blocks and 64-unit words, with partial tails
    values = rng.standard_normal(shape) * 10.0 ** rng.integers(-13, 3, shape)
    values[rng.random(shape) < zero_share] = 0
    values[::7] = np.where(rng.random(values[::7].shape) < 0.5, -0.0, values[::7])
    values.flat[::101] = np.nan
    values.flat[::103] = -np.inf
    values.flat[::107] = 1e-3  # on a grid threshold
    batches = [{"layer": part.astype(dtype)} for part in np.array_split(values, 3)]
    engine = StreamingIUA(atol=1e-3)
    for batch in batches:
        engine.update(batch)
    for atol in (0.0, 1e-12, 1e-3, 1.0):
        with np.errstate(invalid="ignore"):
            want = brute_force(batches, atol)["layer"]
        got = engine.results_at(atol=atol)["layer"]
        np.testing.assert_array_equal(got.unit_inactive_count, want["unit"])
        np.testing.assert_array_equal(got.inactive, want["inactive"])


@st.composite
def float32_grids(draw):
    """Sorted float32 grids with 0 and at most one value per octave, mostly.

    Octaves are drawn from a window of 62 anywhere in float32's range, each
    value at the octave's lower edge, its top or between. A few grids put two
    values in one octave or a subnormal value next to 0, and the vector
    kernel leaves those to the bucket kernels.
    """
    base = draw(st.integers(-149, 127))
    exponents = draw(st.sets(st.integers(base, min(127, base + 61)), min_size=1, max_size=50))
    fractions = st.sampled_from([1.0, 1.5, float(np.nextafter(np.float32(2), np.float32(0)))])
    values = [draw(st.one_of(fractions, st.floats(1, 2, exclude_max=True))) * 2.0**e
              for e in exponents]
    values += draw(st.lists(st.floats(0, 3e38), max_size=2))
    grid = np.unique(np.array([0.0, *values], dtype=np.float32))
    return grid[np.isfinite(grid)]


@settings(max_examples=200, deadline=None)
@given(float32_grids(), st.integers(1, 600), st.sampled_from([0.0, 0.5, 0.9]),
       st.integers(0, 2**32 - 1))
def test_octave_kernel_equals_numpy(grid, units, zero_share, seed):
    # Values on, next to and between thresholds and octave edges, at any
    # width (the last block of a row is binned without the vector path), and
    # enough zeros for the packed mode in some cases.
    rng = np.random.default_rng(seed)
    edges = np.float32(2.0) ** np.arange(-149, 128, dtype=np.float32)
    with np.errstate(over="ignore"):
        pool = np.concatenate([
            grid, np.nextafter(grid, np.float32(np.inf)), np.nextafter(grid, np.float32(0)),
            edges, np.nextafter(edges, np.float32(0)),
            [np.nan, np.inf, np.finfo(np.float32).max, -0.0],
        ]).astype(np.float32)
    x = rng.choice(pool, size=(5, units)) * rng.choice(np.float32([1, -1]), size=(5, units))
    x[rng.random(x.shape) < zero_share] = 0
    expected = kernels.bin_numpy(x, grid)
    got = kernels.bin_values(x, grid, {})
    np.testing.assert_array_equal(kernels.from_blocks(got[0], units),
                                  kernels.from_blocks(expected[0], units))
    np.testing.assert_array_equal(got[1], expected[1])


def test_octave_tables_cover_the_default_grid():
    # The 1-2-5 grid has one threshold per octave, so the vector kernel takes
    # its float32 batches on AVX-512 hosts.
    thresholds = native_thresholds(GRID, np.dtype(np.float32))
    below = kernels.octave_tables(thresholds)[0]
    assert below[-1] == len(thresholds)
    relu = np.maximum(np.random.default_rng(0).standard_normal((8, 512), dtype=np.float32), 0)
    vector = kernels.vector_kernel_available()
    expected = "vector_sparse" if vector else "sparse"
    assert kernels._choose_kernel(relu, True, True) == expected
    expected = "vector" if vector else "dense"
    assert kernels._choose_kernel(np.abs(relu) + 1, True, True) == expected
    assert kernels.octave_tables(np.float32([0, 2e-3, 3e-3])) is None  # one octave, two thresholds
    assert kernels.octave_tables(np.float32([0, 2.0**-140])) is None  # subnormal next to 0
    assert kernels.octave_tables(thresholds.astype(np.float64)) is None
