"""Adversarial checks that the streaming engine stays exact at every grid threshold.

Each test feeds data chosen to hit a corner of the binning kernels or of the
layer cache: counts kept in narrow integers that must widen in time, counts
taken back after a failed update, reads between and during batches. Every
result field is then compared with brute-force ``numpy.isclose`` at every
threshold of the engine's grid.
"""

from __future__ import annotations

import os
import signal
import threading
import warnings

import numba
import numpy as np
import pytest

from iua_widgets import StreamingIUA
from iua_widgets.engine import kernels
from iua_widgets.engine import layer as layer_module
from iua_widgets.engine.state import AnalysisState, LayerState, restore

from .reference import inactive_mask

# -- data -------------------------------------------------------------------


def adversarial_values(rng, dtype, shape, grid):
    """Random values of ``dtype`` mixed with the cases that break bit-pattern binning.

    Floats get every grid threshold (as the nearest value of ``dtype``) and
    its neighbours one ulp either side, with both signs, plus -0.0,
    subnormals, the largest finite value, NaN and +-inf. Integers get their
    extremes and the integers next to the grid thresholds.
    """
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        near = np.floor(grid[(grid >= 1) & (grid < min(info.max, 2**53))]).astype(np.int64)
        near = np.concatenate([near - 1, near, near + 1])
        near = near[(near >= info.min) & (near <= info.max)]
        special = np.concatenate([near.astype(dtype), np.array([0, 1, info.min, info.max], dtype)])
        return special[rng.integers(0, len(special), shape)]
    with np.errstate(over="ignore"):
        on_grid = grid.astype(dtype)
    on_grid = on_grid[np.isfinite(on_grid)]
    info = np.finfo(dtype)
    with np.errstate(over="ignore"):  # the neighbour of the largest finite value is inf
        above = np.nextafter(on_grid, dtype.type(np.inf))
    special = np.concatenate([
        on_grid,
        above,
        np.nextafter(on_grid, dtype.type(-np.inf)),
        np.array([-0.0, info.smallest_subnormal, info.smallest_normal, info.max,
                  np.nan, np.inf, -np.inf], dtype=dtype),
    ])
    special = special * np.where(rng.random(len(special)) < 0.5, -1, 1).astype(dtype)
    values = special[rng.integers(0, len(special), shape)]
    with np.errstate(over="ignore"):
        dense = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-14, 4, shape)).astype(dtype)
    return np.where(rng.random(shape) < 0.5, dense, values)


def zero_rows(rng, array, shares):
    """Set ``shares[i % len(shares)]`` of row ``i``'s values to zero, a third of them -0.0."""
    rows = array.reshape(len(array), -1)
    for i, row in enumerate(rows):
        zero = rng.random(row.shape) < shares[i % len(shares)]
        row[zero] = 0
        if array.dtype.kind == "f":
            row[zero & (rng.random(row.shape) < 0.3)] = -0.0
    return array


def misjudged_batch(rng, dtype, inputs, units, grid, sampled_share):
    """Build a batch whose sampled rows mislead the kernel choice.

    Rows 0 and ``inputs // 2``, the two rows the choice looks at, get
    ``sampled_share`` zeros and every other row ``1 - sampled_share``.
    """
    array = adversarial_values(rng, dtype, (inputs, units), grid)
    shares = np.full(inputs, 1.0 - sampled_share)
    shares[[0, inputs // 2]] = sampled_share
    return zero_rows(rng, array, shares)


# -- brute force ------------------------------------------------------------


def assert_exact(engine, name, arrays, unit="element", channel_axis=1):
    """Compare every result of layer ``name`` with ``numpy.isclose`` on all ``arrays``."""
    arrays = [np.asarray(a) for a in arrays if len(a)]
    whole = np.concatenate(arrays)
    nonfinite = sum(
        int(np.count_nonzero(~np.isfinite(a))) for a in arrays if a.dtype.kind == "f"
    )
    for atol in engine.grid:
        with np.errstate(invalid="ignore", over="ignore"):
            mask = inactive_mask(whole, float(atol), unit, channel_axis)
        inactive = mask.reshape(len(mask), -1).sum(axis=1)
        result = engine.results_at(atol=float(atol))[name]
        where = f"layer {name!r} at atol={float(atol)!r}"
        assert result.inputs == len(whole), where
        assert result.nonfinite == nonfinite, where
        np.testing.assert_array_equal(result.unit_inactive_count, mask.sum(axis=0), err_msg=where)
        assert result.unit_inactive_count.dtype == np.int64, where
        if result.inactive is not None:
            np.testing.assert_array_equal(result.inactive, inactive, err_msg=where)
        assert result.mean_inactive == pytest.approx(np.mean(inactive), rel=1e-12), where
        assert result.std_inactive == pytest.approx(np.std(inactive), rel=1e-9, abs=1e-9), where


def assert_cache_exact(engine, name, arrays):
    """Compare ``layer_stats(name).cumulative`` with ``numpy.isclose``, row by row."""
    whole = np.concatenate([np.asarray(a) for a in arrays if len(a)])
    cumulative = engine.layer_stats(name).cumulative
    for index, atol in enumerate(engine.grid):
        with np.errstate(invalid="ignore", over="ignore"):
            expected = inactive_mask(whole, float(atol)).reshape(len(whole), -1).sum(axis=0)
        np.testing.assert_array_equal(cumulative[index], expected, err_msg=f"atol={atol!r}")


def feed(engine, batches):
    """Feed ``batches`` to ``engine`` with NaN and inf warnings silenced, and return ``engine``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN and inf warnings
        for batch in batches:
            engine.update(batch)
    return engine


# -- kernels ----------------------------------------------------------------


def force_kernel(monkeypatch, name):
    """Make every batch go to kernel ``name`` (the vector ones where their tables exist)."""
    vector = name.startswith("vector")
    if vector and not kernels._AVX512:
        pytest.skip("the vector kernels need an AVX-512 CPU")

    def choose(x, has_tables, has_octaves):
        if not has_tables:
            return "search"
        return "dense" if vector and not has_octaves else name

    monkeypatch.setattr(kernels, "_choose_kernel", choose)


@pytest.mark.parametrize("kernel", ["dense", "sparse", "vector", "vector_sparse"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int16, np.bool_])
def test_each_kernel_exact_at_any_zero_share(monkeypatch, dtype, kernel):
    # Forcing the kernel choice runs the zero-skipping kernel on dense rows
    # and the others on zero rows, whatever the sampled rows contain.
    force_kernel(monkeypatch, kernel)
    rng = np.random.default_rng(11)
    engine = StreamingIUA(atol=1e-3)
    arrays = [
        zero_rows(rng, adversarial_values(rng, dtype, (inputs, 321), engine.grid), shares)
        for inputs, shares in [(1, [1.0]), (2, [0.0, 0.5]), (97, [0.0, 0.3, 0.6, 0.95, 1.0])]
    ]
    feed(engine, [{"a": a} for a in arrays])
    assert_exact(engine, "a", arrays)


@pytest.mark.parametrize("sampled_share", [0.0, 1.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sampled_rows_misjudge_zero_share(dtype, sampled_share):
    rng = np.random.default_rng(12)
    engine = StreamingIUA()
    arrays = [misjudged_batch(rng, dtype, n, 300, engine.grid, sampled_share) for n in (2, 9, 64)]
    feed(engine, [{"a": a} for a in arrays])
    assert_exact(engine, "a", arrays)


@pytest.mark.parametrize("units", [1, 63, 64, 65, 255, 256, 257, 513])
def test_unit_counts_off_block_multiples(units):
    rng = np.random.default_rng(units)
    engine = StreamingIUA()
    arrays = [
        misjudged_batch(rng, np.float32, n, units, engine.grid, share)
        for n, share in [(3, 1.0), (5, 0.0), (1, 0.5)]
    ]
    feed(engine, [{"a": a} for a in arrays])
    assert_exact(engine, "a", arrays)


def test_layer_without_units_beside_others():
    engine = StreamingIUA()
    rng = np.random.default_rng(13)
    dense = [adversarial_values(rng, np.float32, (n, 70), engine.grid) for n in (4, 2)]
    empty = [np.zeros((n, 3, 0), dtype=np.float32) for n in (4, 2)]
    feed(engine, [{"empty": e, "dense": d} for e, d in zip(empty, dense)])
    result = engine.results_at(atol=0.0)["empty"]
    assert result.inputs == 6
    assert result.units == 0
    np.testing.assert_array_equal(result.inactive, np.zeros(6))
    assert_exact(engine, "dense", dense)


@pytest.mark.parametrize(
    "grid",
    [
        pytest.param([1e-8, 1e-8 * (1 + 2**-40), 1e-8 * (1 + 2**-20)], id="closer-than-tables"),
        pytest.param([1.0, float(np.nextafter(1.0, 2.0)), 2.0, 2.0**-20], id="powers-of-two"),
        pytest.param([1e30, 1e300, float(np.finfo(np.float32).max)], id="huge"),
        pytest.param([float(np.finfo(np.float64).max)], id="float64-max"),
        pytest.param([5e-324, 1e-320, 2.0**-149, 2.0**-126], id="subnormal"),
        pytest.param(list(np.geomspace(1e-40, 1e30, 248)), id="248-thresholds"),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.bool_])
def test_custom_grid_exact_at_every_threshold(grid, dtype):
    rng = np.random.default_rng(14)
    engine = StreamingIUA(grid=grid, atol=grid[0])
    arrays = [misjudged_batch(rng, dtype, n, 130, engine.grid, s) for n, s in [(6, 1.0), (40, 0.0)]]
    if dtype in (np.float32, np.float64):
        with np.errstate(over="ignore"):
            arrays[1][0, : len(engine.grid)] = engine.grid[:130].astype(dtype)
    feed(engine, [{"a": a} for a in arrays])
    assert_exact(engine, "a", arrays)
    assert_cache_exact(engine, "a", arrays)


def test_numpy_fallback_equals_compiled(monkeypatch):
    rng = np.random.default_rng(15)
    grid = [1e-8, 1e-8 * (1 + 2**-30), 1e-3, 1e30]
    arrays = [
        misjudged_batch(rng, np.float32, n, 257, np.array(grid), share)
        for n, share in [(5, 1.0), (8, 0.0)]
    ]
    compiled = feed(StreamingIUA(grid=grid), [{"a": a} for a in arrays])
    monkeypatch.setenv("IUA_WIDGETS_KERNEL", "numpy")
    fallback = feed(StreamingIUA(grid=grid), [{"a": a} for a in arrays])
    assert_exact(fallback, "a", arrays)
    assert_exact(compiled, "a", arrays)


# -- counts past the narrow integer types ------------------------------------


def test_inputs_across_uint16_limits_read_between_batches():
    # Unit counts start in uint16 and the kernel takes at most 65,535 inputs
    # per call: these sizes cross 2**15 and 2**16 - 1 by one, within and
    # across batches.
    rng = np.random.default_rng(16)
    engine = StreamingIUA(atol=1e-3)
    seen = []
    for position, inputs in enumerate([65_534, 1, 1, 65_535 + 70_000]):
        array = adversarial_values(rng, np.float32, (inputs, 5), engine.grid)
        array[:, 0] = 0  # a dead unit, whose count passes the uint16 maximum
        zero_rows(rng, array, [0.9, 0.0, 0.0, 0.6])
        feed(engine, [{"a": array}])
        seen.append(array)
        if position == 1:
            assert engine.results_at(atol=0.0)["a"].unit_inactive_count[0] == 65_535
        if position == 2:
            assert_cache_exact(engine, "a", seen)  # reads the cumulative counts mid-stream
    assert_exact(engine, "a", seen)
    assert engine.results_at(atol=0.0)["a"].unit_inactive_count[0] == sum(map(len, seen))


def test_dtype_changes_within_one_layer():
    # float16 and integers arrive converted and float64 takes other
    # thresholds, but all of them add to the same unit counts.
    rng = np.random.default_rng(17)
    engine = StreamingIUA(atol=2e-3)
    seen = []
    dtypes = [np.float32, np.float64, np.int8, np.float16, np.bool_, np.uint64]
    for position, dtype in enumerate(dtypes):
        array = misjudged_batch(rng, dtype, 7 + position, 260, engine.grid, position % 2)
        feed(engine, [{"a": array}])
        seen.append(array)
        if position == 3:
            assert_cache_exact(engine, "a", seen)
        assert_exact(engine, "a", seen)


@pytest.mark.parametrize("per_input", ["grid", "start", "none"])
def test_channel_units_exact(per_input):
    rng = np.random.default_rng(18)
    engine = StreamingIUA(unit="channel", channel_axis=-1, per_input=per_input, atol=1e-6)
    arrays = []
    for inputs, share in [(3, 1.0), (8, 0.0), (1, 0.97)]:
        array = adversarial_values(rng, np.float32, (inputs, 2, 3, 70), engine.grid)
        arrays.append(zero_rows(rng, array, [share]))
    arrays[1][:, :, :, 5] = 0  # a dead channel
    feed(engine, [{"a": a} for a in arrays])
    assert_exact(engine, "a", arrays, unit="channel", channel_axis=-1)


# -- failed updates -----------------------------------------------------------


def mixed_batch(rng, inputs, grid):
    """One batch of three layers: float32, int8 (converted) and float16 (converted)."""
    return {
        "a": misjudged_batch(rng, np.float32, inputs, 300, grid, 1.0),
        "b": misjudged_batch(rng, np.int8, inputs, 70, grid, 0.0),
        "c": misjudged_batch(rng, np.float16, inputs, 5, grid, 0.5),
    }


def fail_in_layer(monkeypatch, failing, before_failure=lambda: None):
    """Make ``LayerStats.compute`` raise ``MemoryError`` for layer ``failing``."""
    original = layer_module.LayerStats.compute

    def compute_then_fail(self, *args, **kwargs):
        if self.name == failing:
            before_failure()
            raise MemoryError("simulated")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(layer_module.LayerStats, "compute", compute_then_fail)


@pytest.mark.parametrize("failing", ["b", "c"])
@pytest.mark.parametrize("failed_case", ["small", "read-between", "large"])
def test_failed_update_leaves_no_trace(monkeypatch, tmp_path, failing, failed_case):
    rng = np.random.default_rng(19)
    engine = StreamingIUA(atol=1e-3)
    applied = [mixed_batch(rng, 20, engine.grid)]
    feed(engine, applied)
    failed = mixed_batch(rng, 30, engine.grid)
    if failed_case == "large":
        # 65,520 inputs, with the 20 before them more than a uint16 count
        # holds: the layer widens its counts while binning the failed batch.
        failed = {name: np.tile(array, (2_184, 1)) for name, array in failed.items()}

    reads_mid_update = []

    def read_cumulative():
        # As a dashboard thread may, between computing and taking the batch back.
        reads_mid_update.append(engine.layer_stats("a").cumulative)

    reader = read_cumulative if failed_case == "read-between" else lambda: None
    fail_in_layer(monkeypatch, failing, reader)
    for _ in range(2):
        with pytest.raises(MemoryError):
            engine.update(failed)
    monkeypatch.undo()
    assert len(reads_mid_update) == (2 if failed_case == "read-between" else 0)

    assert engine.inputs_seen == sum(len(batch["a"]) for batch in applied)
    applied.append(mixed_batch(rng, 11, engine.grid))
    feed(engine, applied[-1:])
    for name in ("a", "b", "c"):
        assert_exact(engine, name, [batch[name] for batch in applied])

    engine.save(tmp_path / "after-failure.npz")
    loaded = StreamingIUA.load(tmp_path / "after-failure.npz")
    extra = mixed_batch(rng, 4, engine.grid)
    merged = StreamingIUA.merge(loaded, feed(StreamingIUA(atol=1e-3), [extra]))
    for name in ("a", "b", "c"):
        assert_exact(merged, name, [batch[name] for batch in [*applied, extra]])


def test_failed_first_update_adds_no_layer(monkeypatch):
    rng = np.random.default_rng(20)
    engine = StreamingIUA()
    fail_in_layer(monkeypatch, "c")
    with pytest.raises(MemoryError):
        engine.update(mixed_batch(rng, 12, engine.grid))
    monkeypatch.undo()
    assert engine.layer_names == []
    batch = mixed_batch(rng, 3, engine.grid)
    feed(engine, [batch])
    for name in ("a", "b", "c"):
        assert_exact(engine, name, [batch[name]])


# -- save, merge, threads, promotion ----------------------------------------


def test_save_and_merge_mid_stream(tmp_path):
    rng = np.random.default_rng(21)
    grid = [1e-9, 1e-3, 1.0]
    batches = [{"a": misjudged_batch(rng, np.float32, n, 257, np.array(grid), n % 2)}
               for n in (5, 8, 3, 6)]
    first = feed(StreamingIUA(grid=grid, atol=1e-3), batches[:2])
    first.save(tmp_path / "first.npz")
    resumed = feed(StreamingIUA.load(tmp_path / "first.npz"), batches[2:3])
    second = feed(StreamingIUA(grid=grid, atol=1e-3), batches[3:])
    merged = StreamingIUA.merge(resumed, second)
    assert_exact(merged, "a", [b["a"] for b in batches])
    feed(merged, batches[:1])
    assert_exact(merged, "a", [b["a"] for b in [*batches, batches[0]]])
    assert_exact(first, "a", [b["a"] for b in batches[:2]])  # the saved engine is unchanged


def test_threaded_reads_see_whole_batches():
    rng = np.random.default_rng(22)
    engine = StreamingIUA(atol=1e-3)
    batches = [misjudged_batch(rng, np.float32, int(n), 300, engine.grid, n % 2)
               for n in rng.integers(1, 2000, 40)]
    indices = [0, engine.start_index, len(engine.grid) - 1]
    magnitudes = [np.abs(b.astype(np.float64)) for b in batches]
    # prefix[j][k]: unit counts at grid[indices[j]] over the first k batches.
    prefix = []
    for index in indices:
        with np.errstate(invalid="ignore"):
            counts = [(m <= engine.grid[index]).sum(axis=0) for m in magnitudes]
        prefix.append(np.cumsum([np.zeros(300, dtype=np.int64), *counts], axis=0))
    boundaries = np.cumsum([0, *map(len, batches)])
    problems = []
    finished = threading.Event()

    def read_until_finished():
        reads = 0
        while not finished.is_set() or reads < 3:
            position = reads % len(indices)
            result = engine.results_at(atol=float(engine.grid[indices[position]])).get("a")
            reads += 1
            if result is None:
                continue
            if reads % 5 == 0:
                # Reading the cumulative counts from this thread too must not disturb them.
                cumulative = engine.layer_stats("a").cumulative
                if cumulative.shape != (len(engine.grid), 300):
                    problems.append(f"cumulative counts have shape {cumulative.shape}")
            batch_count = int(np.searchsorted(boundaries, result.inputs))
            if boundaries[batch_count] != result.inputs:
                problems.append(f"{result.inputs} inputs is not a batch boundary")
            elif not np.array_equal(result.unit_inactive_count, prefix[position][batch_count]):
                problems.append(f"counts after {batch_count} batches differ")

    reader = threading.Thread(target=read_until_finished)
    reader.start()
    feed(engine, [{"a": b} for b in batches])
    finished.set()
    reader.join()
    assert problems == []
    assert_exact(engine, "a", batches)


def test_counts_past_uint32_after_restore():
    # A restored layer 3 inputs short of 2**32 - 1, fed by the compiled kernel.
    grid = StreamingIUA().grid
    inputs = 2**32 - 4
    cumulative = np.zeros((len(grid), 3), dtype=np.uint32)
    cumulative[:, 0] = inputs  # dead so far
    cumulative[grid >= 1.0, 1] = inputs
    per_input = np.where(grid >= 1.0, 2, 1)
    state = AnalysisState(
        rtol=1e-5, atol=1e-8, grid=grid, unit="element", channel_axis=1, per_input="none",
        inputs_seen=inputs, batches_seen=1,
        layers=[LayerState("a", (3,), inputs, 0, cumulative,
                           [int(c) * inputs for c in per_input],
                           [int(c) ** 2 * inputs for c in per_input], None)],
    )
    engine = restore(state)
    batch = np.array([[0.0, 0.5, -0.0]] * 6, dtype=np.float32)
    engine.update({"a": batch})
    engine.update({"a": batch[:1]})
    total = inputs + 7
    result = engine.results_at(atol=0.0)["a"]
    np.testing.assert_array_equal(result.unit_inactive_count, [total, 0, 7])
    assert result.inputs == total
    assert result.dead_units == 1
    np.testing.assert_array_equal(
        engine.results_at(atol=1.0)["a"].unit_inactive_count, [total, total, 7]
    )
    assert engine.layer_stats("a").cumulative.dtype == np.int64


@pytest.mark.parametrize("restored", [2**31 - 40_000, 2**31 - 5, 2**31 + 3])
def test_counts_past_int32_after_restore(restored):
    # Counts near 2**31 - 1, the most a uint16 high part with 15 low bits holds.
    grid = StreamingIUA().grid
    cumulative = np.zeros((len(grid), 2), dtype=np.uint32)
    cumulative[:, 0] = restored
    state = AnalysisState(
        rtol=1e-5, atol=1e-8, grid=grid, unit="element", channel_axis=1, per_input="none",
        inputs_seen=restored, batches_seen=1,
        layers=[LayerState("a", (2,), restored, 0, cumulative, [restored] * len(grid),
                           [restored] * len(grid), None)],
    )
    engine = restore(state)
    batch = np.zeros((32_768, 2), dtype=np.float32)
    batch[:, 1] = 1.0
    for _ in range(3):
        engine.update({"a": batch})
    total = restored + 3 * 32_768
    np.testing.assert_array_equal(engine.results_at(atol=0.0)["a"].unit_inactive_count, [total, 0])
    np.testing.assert_array_equal(
        engine.results_at(atol=1.0)["a"].unit_inactive_count, [total, 3 * 32_768]
    )
    np.testing.assert_array_equal(engine.layer_stats("a").cumulative[0], [total, 0])


def test_search_and_table_kernels_share_counts():
    # The two smallest thresholds, float32's two smallest subnormals, share
    # the finest bucket of the float32 tables, so float32 batches take the
    # search kernel and float64 batches the table kernel. The two add their
    # counts to the same layer in different ways.
    grid = [2.0**-149, 2.0**-148, 1e-3]
    rng = np.random.default_rng(24)
    engine = StreamingIUA(grid=grid, atol=1e-3)
    seen = []
    for inputs, dtype in [(40_000, np.float64), (30_000, np.float32), (70_000, np.float32),
                          (30_000, np.float64), (5, np.float32)]:
        array = adversarial_values(rng, dtype, (inputs, 3), engine.grid)
        array[:, 0] = dtype(2.0**-149)
        seen.append(zero_rows(rng, array, [0.9, 0.1]))
        feed(engine, [{"a": array}])
    assert_exact(engine, "a", seen)


# -- defects found by these tests, fixed ---------------------------------------


def test_interrupt_during_kernel_keeps_update_atomic(monkeypatch):
    engine = StreamingIUA()
    zeros = np.zeros((4, 300), dtype=np.float32)
    engine.update({"a": zeros})

    def interrupt_while_running(kernel):
        def run(*args):
            kernel(*args)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C pressed while the kernel ran

        return run

    for name in ("_bin_table_kernel", "_bin_table_kernel_sparse", "_bin_vector_kernel"):
        monkeypatch.setattr(kernels, name, interrupt_while_running(getattr(kernels, name)))
    with pytest.raises(KeyboardInterrupt):
        engine.update({"a": np.zeros((6, 300), dtype=np.float32)})
    monkeypatch.undo()

    result = engine.results_at(atol=0.0)["a"]
    assert result.inputs == engine.inputs_seen
    np.testing.assert_array_equal(result.unit_inactive_count, np.full(300, result.inputs))


def test_cumulative_read_mid_update_excludes_batch(monkeypatch):
    engine = StreamingIUA()
    zeros = np.zeros((3, 10), dtype=np.float32)
    engine.update({"a": zeros, "b": zeros})
    seen = {}

    def read_from_other_thread():
        stats = engine.layer_stats("a")
        reader = threading.Thread(
            target=lambda: seen.update(counts=stats.cumulative[0].copy(), inputs=stats.inputs)
        )
        reader.start()
        reader.join()

    fail_in_layer(monkeypatch, "b", read_from_other_thread)
    with pytest.raises(MemoryError):
        engine.update({"a": zeros, "b": zeros})
    assert seen["inputs"] == 3
    np.testing.assert_array_equal(seen["counts"], np.full(10, 3))


def test_apply_failure_in_later_layer_changes_no_layer(monkeypatch):
    engine = StreamingIUA()
    zeros = np.zeros((4, 3), dtype=np.float32)
    engine.update({"a": zeros, "b": zeros})
    original = layer_module.LayerStats.apply

    def apply_or_fail(self, part):
        if self.name == "b":
            raise MemoryError("simulated")
        return original(self, part)

    monkeypatch.setattr(layer_module.LayerStats, "apply", apply_or_fail)
    with pytest.raises(MemoryError):
        engine.update({"a": zeros, "b": zeros})
    monkeypatch.undo()
    for name in ("a", "b"):
        result = engine.results_at(atol=0.0)[name]
        assert result.inputs == 4, name
        np.testing.assert_array_equal(result.unit_inactive_count, [4, 4, 4], err_msg=name)


@pytest.mark.parametrize("shape", [(2, 3, 0), (2, 0, 4)], ids=["empty-channels", "no-channels"])
def test_channel_units_of_empty_responses(shape):
    array = np.zeros(shape, dtype=np.float32)
    engine = StreamingIUA(unit="channel")
    engine.update({"a": array})
    assert_exact(engine, "a", [array], unit="channel")


@pytest.mark.parametrize("dtype", [">f2", ">f4", ">f8"])
def test_big_endian_floats_counted(dtype):
    rng = np.random.default_rng(23)
    engine = StreamingIUA()
    array = adversarial_values(rng, np.dtype(dtype).newbyteorder("="), (5, 20), engine.grid)
    array = array.astype(dtype)
    feed(engine, [{"a": array}])
    assert_exact(engine, "a", [array])


def test_vector_compile_failure_falls_back(monkeypatch):
    # A host whose LLVM cannot build the AVX-512 kernel gets the portable
    # kernels and one warning, with every batch counted once.
    monkeypatch.setattr(kernels, "_AVX512", True)

    def fail_to_compile(*args):
        raise numba.core.errors.TypingError("unknown intrinsic")

    monkeypatch.setattr(kernels, "_bin_vector_kernel", fail_to_compile)
    rng = np.random.default_rng(31)
    arrays = [np.maximum(rng.standard_normal((n, 300), dtype=np.float32), 0) for n in (4, 9)]
    engine = StreamingIUA()
    with pytest.warns(RuntimeWarning, match="AVX-512"):
        engine.update({"a": arrays[0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine.update({"a": arrays[1]})
    assert kernels._AVX512 is False
    assert_exact(engine, "a", arrays)
