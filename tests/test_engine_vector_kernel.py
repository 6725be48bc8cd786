"""Exactness of the AVX-512 binning kernels against brute-force numpy and the numpy kernel.

The two vector modes ("vector" and "vector_sparse") are forced or observed
through ``kernels._choose_kernel``, so every test checks which mode ran.
"""

from __future__ import annotations

import contextlib

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iua_widgets import StreamingIUA
from iua_widgets.engine import kernels, threshold_grid
from iua_widgets.engine.grid import native_thresholds

from .reference import inactive_mask

GRID = threshold_grid()
THRESHOLDS = native_thresholds(GRID, np.float32)
VECTOR_MODES = ("vector", "vector_sparse")
SCALAR_MODES = ("dense", "sparse")
#: NaN bit patterns: quiet, signalling, with payloads, with the sign bit set.
NAN_BITS = np.array([0x7FC00000, 0x7FC00001, 0x7F800001, 0x7FBFFFFF, 0xFFC00000, 0xFFFFFFFF,
                     0xFF800001], dtype=np.uint32)

pytestmark = [
    pytest.mark.filterwarnings("ignore:Response .* contains .* NaN:RuntimeWarning"),
    # A silent fallback to the portable kernels would leave the vector kernel untested.
    pytest.mark.filterwarnings("error:iua_widgets could not compile:RuntimeWarning"),
    pytest.mark.skipif(not kernels.vector_kernel_available(),
                       reason="the AVX-512 kernel needs numba and a CPU with AVX-512F"),
]


@contextlib.contextmanager
def kernel_modes(force: str | None = None):
    """Record the kernel mode of every ``bin_numba`` call, forcing ``force`` where it applies.

    A forced vector mode applies only where the grid has octave tables, and a
    forced scalar mode only where it has bucket tables.
    """
    choose = kernels._choose_kernel
    seen: list[str] = []

    def spy(x, has_tables, has_octaves):
        mode = choose(x, has_tables, has_octaves)
        if (force in VECTOR_MODES and has_octaves) or (force in SCALAR_MODES and has_tables):
            mode = force
        seen.append(mode)
        return mode

    kernels._choose_kernel = spy
    try:
        yield seen
    finally:
        kernels._choose_kernel = choose
    assert kernels._AVX512, "the AVX-512 kernel failed and the portable kernels took over"


def special_values(thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """float32 values on, one ulp around and between thresholds and octave edges, and non-finite ones."""
    info = np.finfo(np.float32)
    powers = np.ldexp(1.0, np.arange(-149, 128)).astype(np.float32)  # subnormal ones included
    up, down = np.float32(np.inf), np.float32(0)
    with np.errstate(over="ignore"):
        parts = [
            thresholds, np.nextafter(thresholds, up), np.nextafter(thresholds, down),
            powers, np.nextafter(powers, up), np.nextafter(powers, down),
            np.float32([0.0, -0.0, info.smallest_subnormal, info.smallest_normal, info.max,
                        np.inf, -np.inf, 3e-7, 7e-9]),
            NAN_BITS.view(np.float32),
        ]
    return np.concatenate(parts).astype(np.float32)


POOL = special_values()


def random_batch(rng, rows: int, units: int, zero_share: float, pool=POOL) -> np.ndarray:
    """Draw ``(rows, units)`` float32 values from ``pool`` with random signs and some zeros."""
    x = rng.choice(pool, size=(rows, units))
    x = np.where(rng.random(x.shape) < 0.5, -x, x)
    x[rng.random(x.shape) < zero_share] = 0
    return x.astype(np.float32)


def assert_kernel_equals_numpy(x, thresholds=THRESHOLDS, scratch=None, add_to_bins=False):
    """Bin ``x`` with ``bin_values`` and check its counts equal ``bin_numpy``'s."""
    units = x.shape[1]
    expected_units, expected_inputs = kernels.bin_numpy(x, thresholds)
    expected_units = kernels.from_blocks(expected_units, units).astype(np.int64)
    scratch = {} if scratch is None else scratch
    if add_to_bins:
        # Start from other counts, so that the kernel must add to them.
        bin_counts = kernels.new_bin_counts(len(thresholds) + 2, units)
        bin_counts[:] = np.arange(bin_counts.size, dtype=np.uint16).reshape(bin_counts.shape) % 97
        before = bin_counts.astype(np.int64)
        unit_cumulative, input_cumulative = kernels.bin_values(x, thresholds, scratch, bin_counts)
        if kernels.can_add_to_bins(x, thresholds):
            assert unit_cumulative is None
            added = np.cumsum(bin_counts.astype(np.int64) - before, axis=1)
            np.testing.assert_array_equal(kernels.from_blocks(added, units), expected_units)
        else:
            # Batches it cannot add come back as counts, with bin_counts left alone:
            # grids without bucket tables (one with float32's maximum) and long batches.
            np.testing.assert_array_equal(bin_counts, before)
            got = kernels.from_blocks(unit_cumulative, units).astype(np.int64)
            np.testing.assert_array_equal(got, expected_units)
    else:
        unit_cumulative, input_cumulative = kernels.bin_values(x, thresholds, scratch)
        got = kernels.from_blocks(unit_cumulative, units).astype(np.int64)
        np.testing.assert_array_equal(got, expected_units)
    np.testing.assert_array_equal(input_cumulative, expected_inputs)


def assert_engine_matches(engine, batches, name, atols=None, unit="element", channel_axis=1):
    """Compare ``engine.results_at`` with ``numpy.isclose`` counts at each of ``atols``."""
    atols = engine.grid if atols is None else atols
    arrays = [batch[name] for batch in batches if name in batch]
    for atol in atols:
        result = engine.results_at(atol=float(atol))[name]
        with np.errstate(invalid="ignore"):  # signalling NaNs warn when upcast
            masks = [inactive_mask(a, float(atol), unit, channel_axis) for a in arrays]
        per_input = np.concatenate([m.reshape(len(m), -1).sum(axis=1) for m in masks])
        per_unit = sum(m.sum(axis=0) for m in masks)
        np.testing.assert_array_equal(result.inactive, per_input, err_msg=f"atol={atol}")
        np.testing.assert_array_equal(result.unit_inactive_count, per_unit, err_msg=f"atol={atol}")
        assert result.inputs == sum(len(a) for a in arrays)
    with np.errstate(invalid="ignore"):
        nonfinite = sum(int(np.count_nonzero(~np.isfinite(a.astype(np.float64)))) for a in arrays)
    assert engine.layer_result(name).nonfinite == nonfinite


def feed(engine, batches):
    for batch in batches:
        engine.update(batch)


# -- the kernel against bin_numpy --------------------------------------------


@pytest.mark.parametrize("mode", VECTOR_MODES)
@pytest.mark.parametrize("units", [1, 255, 256, 257, 511, 512, 2048, 2049, 8193])
def test_vector_kernel_on_block_widths(mode, units):
    rng = np.random.default_rng(units)
    with kernel_modes(mode) as seen:
        for rows in [1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17]:
            x = random_batch(rng, rows, units, zero_share=0.3)
            assert_kernel_equals_numpy(x)
            assert_kernel_equals_numpy(x, add_to_bins=True)
    assert set(seen) == {mode}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode", VECTOR_MODES)
def test_vector_kernel_on_many_stripes(mode, threads):
    # 193 blocks: full stripes of 8 blocks, a last stripe of one partial block.
    units = 192 * kernels._UNIT_BLOCK + 1
    rng = np.random.default_rng(threads)
    previous = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        with kernel_modes(mode) as seen:
            for rows in [7, 8, 9, 17]:
                x = random_batch(rng, rows, units, zero_share=0.6)
                assert_kernel_equals_numpy(x)
                assert_kernel_equals_numpy(x, add_to_bins=True)
    finally:
        numba.set_num_threads(previous)
    assert set(seen) == {mode}


@pytest.mark.parametrize("mode", VECTOR_MODES)
def test_vector_kernel_on_65535_rows(mode):
    # Units with one value on every row fill a bin up to the uint16 limit of one call.
    rows = kernels._SUB_BATCH
    rng = np.random.default_rng(7)
    x = np.zeros((rows, 2 * kernels._UNIT_BLOCK), dtype=np.float32)
    x[:, 1] = np.nan
    x[:, 2] = -np.inf
    x[:, 3] = THRESHOLDS[10]
    x[:, 4] = np.nextafter(THRESHOLDS[10], np.float32(1))
    x[:, 5] = np.finfo(np.float32).max
    x[:, 256:] = rng.choice(POOL, size=(rows, 256))
    with kernel_modes(mode) as seen:
        assert_kernel_equals_numpy(x)
        assert_kernel_equals_numpy(x[:, :259])  # whole block and a partial one
    assert set(seen) == {mode}


def test_zero_share_at_packed_switch():
    # The two sampled rows (first and middle) hold just enough zeros, or one less.
    units = 1000
    sample_size = 2 * units
    needed = int(np.ceil(kernels._PACKED_FROM * sample_size))
    rng = np.random.default_rng(11)
    for zeros, expected in [(needed, "vector_sparse"), (needed - 1, "vector")]:
        x = random_batch(rng, 4, units, zero_share=0.0, pool=POOL[POOL != 0])
        sampled = x[[0, 2]].reshape(-1)
        sampled[:zeros] = 0
        rng.shuffle(sampled)
        x[[0, 2]] = sampled.reshape(2, units)
        with kernel_modes() as seen:
            assert_kernel_equals_numpy(x)
            assert_kernel_equals_numpy(x, add_to_bins=True)
        assert set(seen) == {expected}


@pytest.mark.parametrize("rows", [2, 9, 17])
def test_misjudged_zero_share(rows):
    # The sampled rows are all zero and the others dense, then the reverse.
    rng = np.random.default_rng(rows)
    middle = rows // 2
    dense = random_batch(rng, rows, 1031, zero_share=0.0, pool=POOL[POOL != 0])
    zero_samples = dense.copy()
    zero_samples[[0, middle]] = 0
    dense_samples = np.zeros_like(dense)
    dense_samples[[0, middle]] = dense[[0, middle]]
    for x, expected in [(zero_samples, "vector_sparse"), (dense_samples, "vector")]:
        with kernel_modes() as seen:
            assert_kernel_equals_numpy(x)
            assert_kernel_equals_numpy(x, add_to_bins=True)
        assert set(seen) == {expected}


@pytest.mark.parametrize("mode", VECTOR_MODES)
def test_vector_kernel_reuses_scratch(mode):
    # One scratch dict across widths, row counts, kernel modes and thread
    # counts, like the buffers of a layer whose batches change size.
    rng = np.random.default_rng(3)
    scratch: dict = {}
    steps = [(17, 2049, mode), (1, 256, "sparse"), (9, 8193, mode), (3, 257, "dense"),
             (8, 512, mode), (16, 300, mode), (2, 2048, "search"), (5, 4096, mode)]
    previous = numba.get_num_threads()
    try:
        for step, (rows, units, step_mode) in enumerate(steps):
            numba.set_num_threads(1 + step % min(2, numba.config.NUMBA_NUM_THREADS))
            x = random_batch(rng, rows, units, zero_share=rng.random())
            with kernel_modes(step_mode if step_mode != "search" else None) as seen:
                if step_mode == "search":
                    # A grid with two thresholds in one bucket has no tables at all.
                    close = np.float32([0, 1e-8, np.nextafter(np.float32(1e-8), np.float32(1))])
                    assert_kernel_equals_numpy(x, close, scratch)
                else:
                    assert_kernel_equals_numpy(x, scratch=scratch, add_to_bins=rows % 2 == 0)
            assert seen == [step_mode]
    finally:
        numba.set_num_threads(previous)


def test_vector_kernel_on_empty_batch():
    x = np.zeros((0, 600), dtype=np.float32)
    with kernel_modes() as seen:
        assert_kernel_equals_numpy(x)
    assert seen[0] in VECTOR_MODES


@pytest.mark.parametrize("mode", VECTOR_MODES)
def test_vector_kernel_on_odd_buffers(mode):
    rng = np.random.default_rng(5)
    x = random_batch(rng, 9, 700, zero_share=0.5)
    read_only = x.copy()
    read_only.flags.writeable = False
    storage = np.zeros(x.nbytes + 1, dtype=np.uint8)
    unaligned = np.ndarray(x.shape, dtype=np.float32, buffer=storage, offset=1)
    unaligned[:] = x
    assert not unaligned.flags.aligned
    with kernel_modes(mode) as seen:
        assert_kernel_equals_numpy(read_only)
        assert_kernel_equals_numpy(unaligned)
    assert set(seen) == {mode}


@st.composite
def octave_grids(draw):
    """float32 grids from the octave edges, tops and middles, with or without 0."""
    base = draw(st.integers(-126, 120))
    exponents = draw(st.sets(st.integers(base, min(127, base + 61)), min_size=1, max_size=30))
    top = float(np.nextafter(np.float32(2), np.float32(0)))
    fractions = st.sampled_from([1.0, 1.5, top]) | st.floats(1, 2, exclude_max=True)
    values = [draw(fractions) * 2.0**e for e in exponents]
    if draw(st.booleans()):
        values.append(0.0)
    grid = np.unique(np.array(values, dtype=np.float32))
    return grid[np.isfinite(grid)]


@settings(max_examples=40, deadline=None)
@given(octave_grids(), st.sampled_from([255, 256, 257, 513, 2049]), st.integers(1, 17),
       st.sampled_from(VECTOR_MODES), st.booleans(), st.integers(0, 2**32 - 1))
def test_vector_kernel_on_custom_grids(grid, units, rows, mode, add_to_bins, seed):
    rng = np.random.default_rng(seed)
    x = random_batch(rng, rows, units, zero_share=rng.random(), pool=special_values(grid))
    with kernel_modes(mode) as seen:
        assert_kernel_equals_numpy(x, grid, add_to_bins=add_to_bins)
    if kernels.octave_tables(grid) is not None:
        assert set(seen) == {mode}


def test_kernel_on_big_endian_float32():
    x = random_batch(np.random.default_rng(1), 3, 512, zero_share=0.3).astype(">f4")
    assert_kernel_equals_numpy(x)


def test_kernel_declines_batches_it_cannot_add():
    # Past 65535 rows the counts per bin no longer fit uint16, so the batch's
    # counts come back instead of being added.
    x = np.zeros((kernels._SUB_BATCH + 1, 256), dtype=np.float32)
    assert not kernels.can_add_to_bins(x, THRESHOLDS)
    assert_kernel_equals_numpy(x, add_to_bins=True)  # bin_counts left as they were


# -- the engine against brute-force numpy ------------------------------------


def threshold_values(grid: np.ndarray) -> np.ndarray:
    """float32 values at each float64 grid threshold: rounded down, rounded to nearest, and ulps."""
    down = native_thresholds(grid, np.float32)
    with np.errstate(over="ignore"):
        nearest = grid.astype(np.float32)
    values = np.concatenate([down, nearest])
    up, toward_zero = np.float32(np.inf), np.float32(0)
    with np.errstate(over="ignore"):
        return np.concatenate([values, np.nextafter(values, up), np.nextafter(values, toward_zero)])


@pytest.mark.parametrize("mode", VECTOR_MODES)
def test_engine_on_every_grid_threshold(mode):
    rng = np.random.default_rng(17)
    pool = np.concatenate([threshold_values(GRID), POOL])
    batches = [{"layer": random_batch(rng, rows, 2 * 256 + 37, zero_share=0.4, pool=pool)}
               for rows in (9, 1, 8)]
    engine = StreamingIUA()
    with kernel_modes(mode) as seen:
        feed(engine, batches)
    assert set(seen) == {mode}
    assert_engine_matches(engine, batches, "layer")


def layouts(x: np.ndarray) -> dict[str, np.ndarray]:
    """The values of float32 ``x`` in other memory layouts and byte orders."""
    reversed_rows = np.ascontiguousarray(x[::-1])
    storage = np.zeros(x.nbytes + 2, dtype=np.uint8)
    unaligned = np.ndarray(x.shape, dtype=np.float32, buffer=storage, offset=2)
    unaligned[:] = x
    read_only = x.copy()
    read_only.flags.writeable = False
    return {
        "every other unit": np.repeat(x, 2, axis=1)[:, ::2],
        "negative strides": reversed_rows[::-1, ::-1][:, ::-1],
        "fortran order": np.asfortranarray(x),
        "big-endian": x.astype(">f4"),
        "unaligned": unaligned,
        "read-only": read_only,
    }


@pytest.mark.parametrize("layout", ["every other unit", "negative strides", "fortran order",
                                    "big-endian", "unaligned", "read-only"])
def test_engine_on_float32_layouts(layout):
    rng = np.random.default_rng(19)
    x = random_batch(rng, 9, 3 * 256 + 5, zero_share=0.5)
    array = layouts(x)[layout]
    np.testing.assert_array_equal(array.astype(np.float32).view(np.uint32), x.view(np.uint32))
    engine = StreamingIUA()
    with kernel_modes() as seen:
        engine.update({"layer": array})
        engine.update({"layer": array[:7]})
    assert len(seen) == 2
    assert set(seen) <= set(VECTOR_MODES)
    assert_engine_matches(engine, [{"layer": array}, {"layer": array[:7]}], "layer",
                          atols=GRID[::3])


@pytest.mark.parametrize("dtype", [np.float16, np.int8, np.int32, np.int64, np.bool_, ">f2"])
def test_engine_on_converted_dtypes(dtype):
    # These become float32 and reach the vector kernel.
    rng = np.random.default_rng(23)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            values = np.concatenate([threshold_values(GRID), POOL]).astype(dtype)
        array = rng.choice(values, size=(9, 600)).astype(dtype)
    elif dtype.kind == "b":
        array = rng.random((9, 600)) < 0.3
    else:
        info = np.iinfo(dtype)
        small = rng.integers(-150, 150, size=(9, 600))
        large = rng.integers(info.min, info.max, size=(9, 600), endpoint=True)
        array = np.where(rng.random((9, 600)) < 0.8, small, large).astype(dtype)
    array[:, :200] = 0
    engine = StreamingIUA()
    with kernel_modes() as seen:
        engine.update({"layer": array})
    assert seen[0] in VECTOR_MODES
    assert_engine_matches(engine, [{"layer": array}], "layer")


@pytest.mark.parametrize("atol", [3e-7, 2.0**-22, float(np.nextafter(2.0**-21, 0)), 3e-8])
def test_engine_with_atol_added_to_grid(atol):
    # The first three lie in octaves the 1-2-5 grid leaves empty, so the
    # vector kernel still applies. 3e-8 shares an octave with 5e-8.
    rng = np.random.default_rng(29)
    engine = StreamingIUA(atol=atol)
    assert atol in engine.grid
    vector = kernels.octave_tables(native_thresholds(engine.grid, np.float32)) is not None
    assert vector == (atol != 3e-8)
    pool = np.concatenate([threshold_values(engine.grid), POOL])
    batches = [{"layer": random_batch(rng, 9, 1000, zero_share=share, pool=pool)}
               for share in (0.1, 0.9)]
    with kernel_modes() as seen:
        feed(engine, batches)
    assert (set(seen) <= set(VECTOR_MODES)) == vector
    assert_engine_matches(engine, batches, "layer")
    assert engine.results["layer"].atol == atol


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.sampled_from([1e-12, 3e-12, 1e-9, 2e-9, 4e-9, 1e-6, 2.5e-6, 1e-3, 0.75, 1.0,
                              3.0, 1e4, 2.0**-126, 2.0**-100, 1e-40, 1e300]),
             min_size=1, max_size=8),
    st.sampled_from([1e-8, 0.0, 3e-7, 1.5e-9]),
    st.sampled_from([255, 256, 257, 1100]),
    st.integers(1, 12),
    st.integers(0, 2**32 - 1),
)
def test_engine_with_custom_grids(values, atol, units, rows, seed):
    # Grids with and without one threshold per octave, some with subnormal
    # values, some with a value beyond float32's range.
    rng = np.random.default_rng(seed)
    engine = StreamingIUA(atol=atol, grid=values)
    pool = np.concatenate([threshold_values(engine.grid), POOL])
    batches = [{"layer": random_batch(rng, rows, units, zero_share=share, pool=pool)}
               for share in (0.0, 0.7)]
    with kernel_modes() as seen:
        feed(engine, batches)
    octaves = kernels.octave_tables(native_thresholds(engine.grid, np.float32))
    if octaves is not None:
        assert set(seen) <= set(VECTOR_MODES)
    assert_engine_matches(engine, batches, "layer")


@pytest.mark.parametrize("mode", VECTOR_MODES)
def test_engine_counts_across_carries(mode):
    # More than 2**17 inputs, so the count of a unit with one value on every
    # row carries from the uint16 low part into the high part several times.
    rng = np.random.default_rng(31)
    batches = []
    for rows in (32768, 32767, 1, 2, kernels._SUB_BATCH):
        x = random_batch(rng, rows, 257, zero_share=0.5)
        x[:, 0] = 0
        x[:, 1] = np.nan
        x[:, 2] = THRESHOLDS[20]
        x[:, 3] = 300.0
        x[:, 256] = 0
        batches.append({"layer": x})
    engine = StreamingIUA(per_input="none")
    with kernel_modes(mode) as seen:
        feed(engine, batches)
    assert set(seen) == {mode}
    stats = engine.layer_stats("layer")
    assert stats.inputs == 131073
    for atol in (0.0, float(GRID[20]), 1e-7, 100.0):
        index = engine.threshold_index(atol)
        with np.errstate(invalid="ignore"):  # signalling NaNs warn when upcast
            expected = sum(inactive_mask(b["layer"], atol).sum(axis=0) for b in batches)
        np.testing.assert_array_equal(stats.cumulative[index], expected, err_msg=f"atol={atol}")
        result = engine.results_at(atol=atol)["layer"]
        np.testing.assert_array_equal(result.unit_inactive_count, expected)
        assert stats.count_sums[index] == int(expected.sum())


def test_engine_channel_units():
    rng = np.random.default_rng(37)
    nchw = random_batch(rng, 9, 300 * 4, zero_share=0.5).reshape(9, 300, 2, 2)
    nchw[:, :150] = 0  # whole channels inactive
    nchw[:, 150:160, 0, 0] = np.nan
    nhwc = np.ascontiguousarray(np.moveaxis(nchw, 1, -1))
    for array, axis in [(nchw, 1), (nhwc, -1)]:
        engine = StreamingIUA(unit="channel", channel_axis=axis)
        with kernel_modes() as seen:
            engine.update({"layer": array})
            engine.update({"layer": array[:3]})
        assert set(seen) <= set(VECTOR_MODES)
        batches = [{"layer": array}, {"layer": array[:3]}]
        assert_engine_matches(engine, batches, "layer", unit="channel", channel_axis=axis)


def test_engine_layers_of_different_widths():
    # One engine, layers of several widths in one batch, one layer arriving later.
    rng = np.random.default_rng(41)
    widths = {"a": 255, "b": 256, "c": 2049, "d": 8193}
    batches = []
    for step, rows in enumerate((9, 16, 1, 17)):
        batch = {name: random_batch(rng, rows, width, zero_share=rng.random())
                 for name, width in widths.items() if name != "d" or step >= 2}
        batches.append(batch)
    engine = StreamingIUA()
    with kernel_modes() as seen:
        feed(engine, batches)
    assert set(seen) & set(VECTOR_MODES)
    for name in widths:
        assert_engine_matches(engine, batches, name, atols=GRID[::4])


def test_two_engines_updated_alternately():
    rng = np.random.default_rng(43)
    first, second = StreamingIUA(), StreamingIUA(atol=3e-7)
    first_batches, second_batches = [], []
    for rows in (8, 9, 7, 17):
        a = {"layer": random_batch(rng, rows, 2049, zero_share=0.8)}
        b = {"layer": random_batch(rng, rows + 1, 513, zero_share=0.1)}
        first.update(a)
        second.update(b)
        first_batches.append(a)
        second_batches.append(b)
    assert_engine_matches(first, first_batches, "layer")
    assert_engine_matches(second, second_batches, "layer")


def engine_state(engine, name):
    stats = engine.layer_stats(name)
    return (stats.cumulative, stats.count_sums, stats.count_square_sums,
            np.concatenate(stats._input_counts), stats.nonfinite)


@pytest.mark.parametrize("setting, modes", [("scalar", SCALAR_MODES), ("numpy", ())])
def test_kernel_settings_agree(monkeypatch, setting, modes):
    rng = np.random.default_rng(47)
    batches = [{"layer": random_batch(rng, rows, 1030, zero_share=share)}
               for rows, share in ((9, 0.1), (17, 0.9), (1, 0.5))]
    states = []
    for value in ("", setting):
        monkeypatch.setenv("IUA_WIDGETS_KERNEL", value)
        engine = StreamingIUA()
        with kernel_modes() as seen:
            feed(engine, batches)
        states.append(engine_state(engine, "layer"))
        allowed = VECTOR_MODES if value == "" else modes
        assert set(seen) <= set(allowed)
        assert len(seen) == (3 if allowed else 0)
    for vector_part, other_part in zip(*states, strict=True):
        np.testing.assert_array_equal(vector_part, other_part)
    assert_engine_matches(engine, batches, "layer")


@pytest.mark.parametrize("mode", [*VECTOR_MODES, *SCALAR_MODES])
def test_engine_with_each_forced_mode(mode):
    rng = np.random.default_rng(53)
    batches = [{"layer": random_batch(rng, rows, 777, zero_share=share)}
               for rows, share in ((8, 0.0), (9, 0.95), (3, 0.4))]
    engine = StreamingIUA()
    with kernel_modes(mode) as seen:
        feed(engine, batches)
    assert set(seen) == {mode}
    assert_engine_matches(engine, batches, "layer")


def test_failed_update_takes_vector_counts_back():
    # The second layer fails after the first one's counts went into its bins;
    # the engine must take exactly those back, binning the batch again.
    rng = np.random.default_rng(59)
    good = {"a": random_batch(rng, 9, 600, 0.5), "b": random_batch(rng, 9, 300, 0.5)}
    engine = StreamingIUA()
    engine.update(good)
    bad = {"a": random_batch(rng, 9, 600, 0.5), "b": random_batch(rng, 9, 300, 0.5)}
    choose = kernels._choose_kernel
    calls = []

    def fail_on_second_layer(x, has_tables, has_octaves):
        calls.append(x.shape)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return choose(x, has_tables, has_octaves)

    kernels._choose_kernel = fail_on_second_layer
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            engine.update(bad)
    finally:
        kernels._choose_kernel = choose
    assert len(calls) >= 2
    for name in good:
        assert_engine_matches(engine, [good], name)
