"""Nothing is lost when a stream fails: atomic batches, kept statistics, clear reports."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest

from iua_widgets import IUA, StreamingIUA
from iua_widgets.engine import kernels
from iua_widgets.engine import layer as layer_module
from iua_widgets.engine.atomic import deferred_interrupt


def test_producer_error_names_batch_and_keeps_statistics():
    def producer():
        yield {"a": np.zeros((2, 3))}
        yield {"a": np.ones((2, 3))}
        raise OSError("disk gone")

    engine = StreamingIUA()
    with pytest.raises(OSError) as caught:
        engine.consume(producer())
    assert "batch 2" in "".join(caught.value.__notes__)
    assert engine.results["a"].inputs == 4
    np.testing.assert_array_equal(engine.results["a"].unit_inactive_count, [2, 2, 2])


def test_keyboard_interrupt_between_batches_keeps_statistics():
    def producer():
        yield {"a": np.zeros((3, 2)), "b": np.zeros((3, 1))}
        raise KeyboardInterrupt

    engine = StreamingIUA()
    with pytest.raises(KeyboardInterrupt):
        engine.consume(producer())
    assert engine.results["a"].inputs == 3
    assert engine.results["b"].inputs == 3
    engine.update({"a": np.ones((1, 2)), "b": np.ones((1, 1))})
    assert engine.results["a"].inputs == 4


def test_interrupt_during_apply_deferred():
    engine = StreamingIUA()
    applied = []
    original = layer_module.LayerStats.apply

    def apply_and_interrupt(self, part):
        original(self, part)
        applied.append(self.name)
        if len(applied) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    layer_module.LayerStats.apply = apply_and_interrupt
    try:
        with pytest.raises(KeyboardInterrupt):
            engine.update({"a": np.zeros((2, 2)), "b": np.zeros((2, 2))})
    finally:
        layer_module.LayerStats.apply = original
    assert applied == ["a", "b"]
    assert engine.results["a"].inputs == 2
    assert engine.results["b"].inputs == 2


def test_deferred_interrupt_raises_after_block():
    finished = False
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            finished = True
    assert finished


def test_failed_batch_is_not_applied_to_any_layer():
    engine = StreamingIUA()
    engine.update({"a": np.zeros((2, 2)), "b": np.zeros((2, 3))})
    with pytest.raises(ValueError):
        engine.update({"a": np.zeros((2, 2)), "b": np.zeros((2, 4))})
    assert engine.results["a"].inputs == 2
    assert engine.inputs_seen == 2


def test_counts_move_to_int64_before_uint32_overflows(monkeypatch):
    monkeypatch.setattr(layer_module, "_UINT32_LIMIT", 5)
    engine = StreamingIUA()
    engine.update({"a": np.zeros((4, 2))})
    assert engine.layer_stats("a").cumulative.dtype == np.uint32
    engine.update({"a": np.zeros((4, 2))})
    assert engine.layer_stats("a").cumulative.dtype == np.int64
    result = engine.results["a"]
    assert result.unit_inactive_count.dtype == np.int64
    np.testing.assert_array_equal(result.unit_inactive_count, [8, 8])


def test_nonfinite_warns_once_per_layer():
    engine = StreamingIUA()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.update({"a": np.array([[np.nan, 0.0]])})
        engine.update({"a": np.array([[np.inf, 0.0]])})
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1
    assert "'a'" in messages[0]
    assert engine.results["a"].nonfinite == 2


def test_mixed_numpy_and_torch_batches():
    torch = pytest.importorskip("torch")
    engine = StreamingIUA()
    engine.update({"a": np.zeros((2, 3), dtype=np.float32)})
    engine.update({"a": torch.ones((1, 3))})
    engine.update({"a": torch.zeros((1, 3), dtype=torch.bfloat16)})
    np.testing.assert_array_equal(engine.results["a"].unit_inactive_count, [3, 3, 3])


def test_generator_exhausted_twice_is_a_clear_error():
    batches = iter([{"a": np.zeros((1, 1))}])
    IUA.introspect(batches)
    with pytest.raises(ValueError, match="no inputs"):
        IUA.introspect(batches)


def test_failing_observer_does_not_stop_stream():
    engine = StreamingIUA()

    def broken(_engine):
        raise ZeroDivisionError("view bug")

    engine.observe(broken)
    with pytest.warns(RuntimeWarning, match="ZeroDivisionError"):
        engine.consume([{"a": np.zeros((1, 2))}, {"a": np.zeros((2, 2))}])
    assert engine.results["a"].inputs == 3


@contextlib.contextmanager
def failing_compute(monkeypatch, name, before=None):
    """Make computing layer ``name`` raise MemoryError (after ``before()``) inside the block."""
    original = layer_module.LayerStats.compute

    def compute_or_fail(self, magnitudes, thresholds, scratch=None):
        if self.name == name:
            if before is not None:
                before()
            raise MemoryError("simulated")
        return original(self, magnitudes, thresholds, scratch)

    monkeypatch.setattr(layer_module.LayerStats, "compute", compute_or_fail)
    with pytest.raises(MemoryError):
        yield
    monkeypatch.setattr(layer_module.LayerStats, "compute", original)


def _relu_batch(rng, inputs, units):
    return np.maximum(rng.standard_normal((inputs, units), dtype=np.float32), 0)


@pytest.mark.parametrize("read_first", [False, True])
def test_failure_after_binning_takes_counts_back(monkeypatch, read_first):
    rng = np.random.default_rng(3)
    first = {"a": _relu_batch(rng, 40, 300), "b": _relu_batch(rng, 40, 5)}
    engine = StreamingIUA(atol=1e-2)
    engine.update(first)
    # A reader in another thread may look in between.
    before = (lambda: engine.layer_stats("a").cumulative) if read_first else None
    with failing_compute(monkeypatch, "b", before):
        engine.update({"a": _relu_batch(rng, 40, 300) + 1, "b": _relu_batch(rng, 40, 5)})

    expected = StreamingIUA(atol=1e-2)
    expected.update(first)
    for index in range(len(engine.grid)):
        np.testing.assert_array_equal(
            engine.layer_stats("a").cumulative[index], expected.layer_stats("a").cumulative[index]
        )
    assert engine.results["a"].inputs == 40
    assert engine.inputs_seen == 40


@pytest.mark.parametrize("units", [3, 515])  # a partial block alone, and two whole blocks
def test_counts_exact_past_uint16_limit(units):
    rng = np.random.default_rng(4)
    batches = [_relu_batch(rng, 30_000, units) for _ in range(3)]
    for batch in batches:
        batch[:, 0] = 0  # 90,000 inactive inputs on unit 0, past the uint16 maximum
    engine = StreamingIUA(atol=1e-2)
    for batch in batches:
        engine.update({"a": batch})
    whole = np.concatenate(batches)
    for atol in (0.0, 1e-2, 1.0):
        result = engine.results_at(atol=atol)["a"]
        expected = np.isclose(whole.astype(np.float64), 0, rtol=1e-5, atol=atol).sum(axis=0)
        np.testing.assert_array_equal(result.unit_inactive_count, expected)


def test_batch_larger_than_carry_step():
    rng = np.random.default_rng(5)
    batch = _relu_batch(rng, 70_000, 2)
    engine = StreamingIUA(atol=1e-2)
    engine.update({"a": batch[:10]})  # leaves counts in the low part before the large batch
    engine.update({"a": batch[10:]})
    expected = np.isclose(batch.astype(np.float64), 0, rtol=1e-5, atol=1e-2).sum(axis=0)
    np.testing.assert_array_equal(engine.results["a"].unit_inactive_count, expected)


def test_results_exact_around_cumulative_read():
    rng = np.random.default_rng(6)
    batches = [_relu_batch(rng, 50, 600) for _ in range(3)]
    engine = StreamingIUA(atol=1e-2)
    seen = []
    for position, batch in enumerate(batches):
        engine.update({"a": batch})
        seen.append(batch)
        if position == 1:
            engine.layer_stats("a").cumulative  # reads the whole cumulative array mid-stream
        whole = np.concatenate(seen).astype(np.float64)
        for atol in (0.0, 1e-2, 2.0):
            expected = np.isclose(whole, 0, rtol=1e-5, atol=atol).sum(axis=0)
            counts = engine.results_at(atol=atol)["a"].unit_inactive_count
            np.testing.assert_array_equal(counts, expected)


def test_counts_exact_when_high_part_turns_int64(monkeypatch):
    monkeypatch.setattr(layer_module, "_HIGH16_LIMIT", 50_000)
    engine = StreamingIUA(atol=1e-2)
    before = None
    for _ in range(3):
        engine.update({"a": np.zeros((30_000, 3), np.float32)})
        before = before or engine.nbytes()
    np.testing.assert_array_equal(engine.results["a"].unit_inactive_count, [90_000] * 3)
    assert engine.nbytes() > before  # 8-byte high counts from here on


def test_failure_after_carry_takes_counts_back(monkeypatch):
    rng = np.random.default_rng(8)
    first = {"a": _relu_batch(rng, 40_000, 3), "b": _relu_batch(rng, 40_000, 2)}
    engine = StreamingIUA(atol=1e-2)
    engine.update(first)
    with failing_compute(monkeypatch, "b"):  # layer a carries its counts before binning
        engine.update({"a": _relu_batch(rng, 30_000, 3), "b": _relu_batch(rng, 30_000, 2)})
    engine.update({"a": first["a"][:5], "b": first["b"][:5]})

    whole = np.concatenate([first["a"], first["a"][:5]]).astype(np.float64)
    for atol in (0.0, 1e-2, 1.0):
        expected = np.isclose(whole, 0, rtol=1e-5, atol=atol).sum(axis=0)
        counts = engine.results_at(atol=atol)["a"].unit_inactive_count
        np.testing.assert_array_equal(counts, expected)


_CONCURRENT_UPDATES = """
import threading

import numpy as np

from iua_widgets import StreamingIUA

rng = np.random.default_rng(0)
arrays = [np.maximum(rng.standard_normal((64, 4096), dtype=np.float32), 0) for _ in range(2)]
engines = [StreamingIUA(), StreamingIUA()]


def work(engine, array):
    for _ in range(20):
        engine.update({"a": array})
        engine.results_at(atol=1e-2)


threads = [threading.Thread(target=work, args=pair) for pair in zip(engines, arrays)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
for engine, array in zip(engines, arrays):
    expected = 20 * np.isclose(array.astype(np.float64), 0, rtol=1e-5, atol=1e-2).sum(axis=0)
    counts = engine.results_at(atol=1e-2)["a"].unit_inactive_count
    assert np.array_equal(counts, expected)
import numba

print(numba.threading_layer())
"""


def test_two_threads_under_workqueue_layer():
    # numba's workqueue layer, the fallback without OpenMP or TBB, aborts the
    # process when two threads launch parallel kernels at once.
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    run = subprocess.run([sys.executable, "-c", _CONCURRENT_UPDATES], env=env,
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["workqueue"]


def test_unknown_kernel_setting_warns_once(monkeypatch):
    monkeypatch.setattr(kernels, "_warned_settings", set())
    monkeypatch.setenv("IUA_WIDGETS_KERNEL", "fastest-please")
    batch = {"a": np.maximum(np.random.default_rng(9).standard_normal((4, 300)), 0)}
    engine = StreamingIUA()
    with pytest.warns(RuntimeWarning, match="'fastest-please' is invalid"):
        engine.update(batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine.update(batch)
    expected = 2 * np.isclose(batch["a"], 0, rtol=1e-5, atol=1e-8).sum(axis=0)
    np.testing.assert_array_equal(engine.results["a"].unit_inactive_count, expected)


def test_masked_array_rejected():
    masked = np.ma.masked_array(np.ones((2, 3)), mask=[[True, False, False], [False] * 3])
    with pytest.raises(TypeError, match="masked array"):
        StreamingIUA().update({"a": masked})


@pytest.mark.parametrize("grid", [1e-3, "1e-3"])
def test_grid_must_be_a_sequence(grid):
    with pytest.raises(TypeError, match="grid must be a sequence"):
        StreamingIUA(grid=grid)


@pytest.mark.parametrize(("limit", "shown"), [(100, "100 bytes"), (5 * 2**20, "5.00 MiB")])
def test_budget_error_sizes_readable(limit, shown):
    batch = {"a": np.ones((4, 100_000), np.float32)}
    with pytest.raises(MemoryError, match=f"max_cache_bytes={shown}"):
        StreamingIUA(max_cache_bytes=limit).update(batch)
