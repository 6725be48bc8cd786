"""Property-based checks of the engine against brute-force numpy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from iua_widgets import StreamingIUA
from iua_widgets.engine import threshold_grid

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
