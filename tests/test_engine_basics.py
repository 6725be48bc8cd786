"""Hand-computed cases and input checks of the streaming engine."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from iua_widgets import IUA, StreamingIUA
from iua_widgets.engine import threshold_grid


def test_dense_hand_computed():
    engine = StreamingIUA(atol=0.1)
    engine.update({"fc": np.array([[0.0, 0.05, 1.0], [0.0, 2.0, -0.1], [0.3, 0.0, 0.0]])})
    result = engine.results["fc"]
    np.testing.assert_array_equal(result.inactive, [2, 2, 2])
    np.testing.assert_array_equal(result.unit_inactive_count, [2, 2, 2])
    np.testing.assert_allclose(result.unit_inactive_proportion, [2 / 3, 2 / 3, 2 / 3])
    assert result.mean_inactive == 2.0
    assert result.std_inactive == 0.0
    assert result.dead_units == 0
    assert result.mean_inactive_fraction == pytest.approx(2 / 3)


def test_conv_element_and_channel_units():
    batch = np.zeros((2, 2, 2, 2))
    batch[0, 1, 0, 0] = 1.0  # input 0: channel 1 has one active element
    batch[1, 0, 1, 1] = -3.0  # input 1: channel 0 has one active element
    element = StreamingIUA(unit="element")
    element.update({"conv": batch})
    assert element.results["conv"].unit_inactive_count.shape == (2, 2, 2)
    np.testing.assert_array_equal(element.results["conv"].inactive, [7, 7])
    assert element.results["conv"].dead_units == 6

    channel = StreamingIUA(unit="channel", channel_axis=1)
    channel.update({"conv": batch})
    result = channel.results["conv"]
    np.testing.assert_array_equal(result.unit_inactive_count, [1, 1])
    np.testing.assert_array_equal(result.inactive, [1, 1])
    assert result.dead_units == 0
    assert result.units == 2


def test_one_dimensional_responses_have_one_unit():
    engine = StreamingIUA()
    engine.update({"score": np.array([0.0, 1.0, 0.0, 0.0])})
    result = engine.results["score"]
    assert result.units == 1
    assert result.unit_inactive_count.shape == ()
    assert int(result.unit_inactive_count) == 3
    np.testing.assert_array_equal(result.inactive, [1, 0, 1, 1])


def test_rtol_has_no_effect_against_zero():
    data = {"a": np.array([[1e-9, 1e-3, 0.5]])}
    low = IUA.introspect(data, rtol=0.0).results["a"]
    high = IUA.introspect(data, rtol=0.9).results["a"]
    np.testing.assert_array_equal(low.unit_inactive_count, high.unit_inactive_count)


def test_nonfinite_counted_and_active():
    engine = StreamingIUA(atol=1.0)
    engine.update({"a": np.array([[np.nan, np.inf, -np.inf, 0.0]])})
    result = engine.results["a"]
    assert result.nonfinite == 3
    np.testing.assert_array_equal(result.unit_inactive_count, [0, 0, 0, 1])


def test_nonfinite_counted_per_value_in_channel_mode():
    batch = np.zeros((1, 2, 3))
    batch[0, 0, :2] = np.nan
    engine = StreamingIUA(unit="channel")
    engine.update({"a": batch})
    assert engine.results["a"].nonfinite == 2
    np.testing.assert_array_equal(engine.results["a"].unit_inactive_count, [0, 1])


def test_grid_contains_decades_and_atol():
    grid = threshold_grid(3e-7)
    for value in (0.0, 1e-12, 2e-12, 5e-12, 1e-8, 2e-8, 5e-8, 1e-7, 1.0, 100.0, 3e-7):
        assert value in grid
    assert np.all(np.diff(grid) > 0)


def test_off_grid_atol_rejected_with_neighbours():
    engine = StreamingIUA()
    engine.update({"a": np.ones((2, 2))})
    with pytest.raises(ValueError, match="1e-08 and 2e-08"):
        engine.results_at(atol=1.5e-8)
    snapped = engine.results_at(atol=1.9e-8, snap=True)
    assert snapped["a"].atol == 2e-8


@pytest.mark.parametrize("bad", [-1e-8, math.nan, math.inf, "x"])
def test_invalid_tolerances_rejected(bad):
    with pytest.raises(ValueError):
        StreamingIUA(atol=bad)
    with pytest.raises(ValueError):
        StreamingIUA(rtol=bad)


def test_unit_shape_change_rejected_and_stats_kept():
    engine = StreamingIUA()
    engine.update({"a": np.zeros((2, 3))})
    with pytest.raises(ValueError, match=r"'a'.*\(3,\).*\(4,\)"):
        engine.update({"a": np.zeros((2, 4))})
    assert engine.results["a"].inputs == 2


def test_layers_disagreeing_on_inputs_rejected_atomically():
    engine = StreamingIUA()
    engine.update({"a": np.zeros((2, 3)), "b": np.zeros((2, 1))})
    with pytest.raises(ValueError, match="'a': 3.*'b': 2"):
        engine.update({"a": np.zeros((3, 3)), "b": np.zeros((2, 1))})
    assert engine.results["a"].inputs == 2
    assert engine.results["b"].inputs == 2


def test_absent_layer_uses_own_input_count():
    engine = StreamingIUA()
    engine.update({"a": np.zeros((2, 1)), "b": np.zeros((2, 1))})
    engine.update({"a": np.ones((3, 1))})
    assert engine.results["a"].inputs == 5
    assert engine.results["b"].inputs == 2
    np.testing.assert_array_equal(engine.results["b"].unit_inactive_proportion, [1.0])


def test_zero_size_batch_ignored():
    engine = StreamingIUA()
    engine.update({"a": np.zeros((0, 4))})
    assert engine.inputs_seen == 0
    assert engine.layer_names == []


def test_empty_producer_is_a_clear_error():
    with pytest.raises(ValueError, match="no inputs"):
        IUA.introspect(iter([]))


def test_non_string_layer_name_rejected():
    with pytest.raises(TypeError, match="strings"):
        StreamingIUA().update({3: np.zeros((1, 1))})


def test_observer_called_after_each_batch():
    engine = StreamingIUA()
    seen = []
    engine.observe(lambda e: seen.append(e.inputs_seen))
    engine.update({"a": np.zeros((2, 1))})
    engine.update({"a": np.zeros((3, 1))})
    assert seen == [2, 5]


def test_show_table_sorted_and_selected():
    iua = IUA.introspect({"b": np.zeros((4, 2)), "a": np.ones((4, 3))})
    frame = IUA.show(iua)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame["response"]) == ["a", "b"]
    assert {"response", "mean inactive", "std inactive"} <= set(frame.columns)
    assert list(IUA.show(iua, response_names=["b"])["response"]) == ["b"]


@pytest.mark.parametrize(
    "kwargs",
    [{"vis_type": "pie"}, {"response_names": ["missing"]}, {"response_names": []}],
)
def test_show_rejects_bad_arguments(kwargs):
    iua = IUA.introspect({"a": np.zeros((2, 2))})
    with pytest.raises(ValueError):
        IUA.show(iua, **kwargs)


def test_cache_budget_error_names_layer_and_ways_out():
    engine = StreamingIUA(max_cache_bytes=1000)
    with pytest.raises(MemoryError, match="big.*unit='channel'"):
        engine.update({"big": np.zeros((1, 100))})


def test_per_input_policies_agree_on_statistics():
    rng = np.random.default_rng(0)
    data = {"a": np.maximum(rng.standard_normal((50, 20)), 0)}
    results = {
        policy: IUA.introspect(data, batch_size=7, per_input=policy).results_at(atol=0.5)["a"]
        for policy in ("grid", "start", "none")
    }
    assert results["start"].inactive is None
    for policy in ("start", "none"):
        np.testing.assert_array_equal(
            results[policy].unit_inactive_count, results["grid"].unit_inactive_count
        )
        assert results[policy].mean_inactive == results["grid"].mean_inactive
        assert results[policy].std_inactive == pytest.approx(results["grid"].std_inactive, rel=1e-14)


def test_layer_without_units_counts_nothing():
    result = IUA.introspect({"empty": np.zeros((4, 0)), "a": np.zeros((4, 2))}).results["empty"]
    assert result.units == 0
    assert result.inputs == 4
    np.testing.assert_array_equal(result.inactive, [0, 0, 0, 0])
    assert result.mean_inactive == 0.0
    assert result.unit_inactive_count.shape == (0,)


def test_longdouble_rejected_with_layer_and_fix():
    with pytest.raises(TypeError, match=r"'L'.*astype\(numpy.float64\)"):
        StreamingIUA().update({"L": np.zeros((2, 3), dtype=np.longdouble)})


def test_zero_row_batch_still_checks_shape():
    engine = StreamingIUA()
    engine.update({"a": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="unit shape"):
        engine.update({"a": np.zeros((0, 7))})


def test_channel_units_reject_one_dimensional_response():
    with pytest.raises(ValueError, match="'score'.*unit='element'"):
        StreamingIUA(unit="channel").update({"score": np.zeros(5)})


@pytest.mark.parametrize("bad", [True, "1e-3", None])
def test_tolerance_must_be_a_real_number(bad):
    with pytest.raises(ValueError, match="real number"):
        StreamingIUA(atol=bad)


def test_atol_a_few_ulps_off_grid_is_accepted():
    engine = StreamingIUA()
    engine.update({"a": np.full((1, 2), 4e-6)})
    computed = 5 * 10.0**-6
    assert computed != 5e-6
    result = engine.results_at(atol=computed)["a"]
    assert result.atol == 5e-6
    np.testing.assert_array_equal(result.unit_inactive_count, [1, 1])


def test_off_grid_message_shows_exact_value():
    engine = StreamingIUA()
    engine.update({"a": np.zeros((1, 1))})
    with pytest.raises(ValueError, match=r"atol=0\.0010000001 .*0\.001 and 0\.002"):
        engine.results_at(atol=1.0000001e-3)


@pytest.mark.parametrize("bad", [0, -1, 1.5, None])
def test_max_cache_bytes_validated(bad):
    with pytest.raises((TypeError, ValueError)):
        StreamingIUA(max_cache_bytes=bad)


def test_budget_counts_per_input_detail():
    engine = StreamingIUA(max_cache_bytes=200_000)
    engine.update({"a": np.zeros((100, 100), np.float32)})
    with pytest.raises(MemoryError, match="per_input='start'"):
        for _ in range(50):
            engine.update({"a": np.zeros((1000, 100), np.float32)})
    assert engine.nbytes() <= 200_000
    assert engine.results["a"].inputs == engine.inputs_seen


def test_introspect_takes_max_cache_bytes():
    with pytest.raises(MemoryError):
        IUA.introspect({"a": np.zeros((2, 1000))}, max_cache_bytes=1000)
    iua = IUA.introspect({"a": np.zeros((2, 10))}, batch_size=np.int64(1), max_cache_bytes=10**6)
    assert iua.results["a"].inputs == 2


def test_producer_returning_non_iterable_is_clear():
    with pytest.raises(TypeError, match="iterable of batches"):
        IUA.introspect(lambda batch_size: 5)


@pytest.mark.parametrize("atol", [1e-8, 2.0**24, 3e7])
def test_large_integers_compare_exactly(atol):
    values = np.array([[2**24 - 1, 2**24, 2**24 + 1, 30_000_001, -(2**31), 0]], dtype=np.int64)
    engine = StreamingIUA(atol=atol)
    engine.update({"a": values})
    want = np.abs(values.astype(np.float64)) <= atol
    np.testing.assert_array_equal(engine.results["a"].unit_inactive_count, want[0].astype(int))


def test_expected_inputs_follow_each_consume():
    engine = StreamingIUA()
    engine.consume({"a": np.zeros((4, 2))})
    assert engine.expected_inputs == 4
    engine.consume({"a": np.zeros((6, 2))})
    assert engine.expected_inputs == 10
    engine.consume(iter([{"a": np.zeros((1, 2))}]))
    assert engine.expected_inputs is None


def test_coarse_grid_is_exact_and_smaller():
    rng = np.random.default_rng(3)
    data = {"a": np.maximum(rng.standard_normal((40, 30)), 0) * rng.choice([1e-9, 1e-5, 1.0], (40, 30))}
    coarse = IUA.introspect(data, grid=[1e-8, 1e-6, 1e-4, 1e-2])
    assert list(coarse.engine.grid) == [0.0, 1e-8, 1e-6, 1e-4, 1e-2]
    assert coarse.engine.nbytes() < IUA.introspect(data).engine.nbytes()
    for atol in coarse.engine.grid:
        want = np.isclose(data["a"], 0, rtol=1e-5, atol=atol).sum(axis=0)
        got = coarse.results_at(atol=float(atol))["a"].unit_inactive_count
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="0.0001 and 0.01"):
        coarse.results_at(atol=1e-3)


def test_grid_with_adjacent_thresholds_uses_search_kernel():
    close = np.nextafter(1e-8, 1.0)
    values = np.array([[1e-8, close, np.nextafter(close, 1.0), 0.0, np.nan]])
    engine = StreamingIUA(grid=[1e-8, close])
    engine.update({"a": values})
    for atol in engine.grid:
        want = np.isclose(values, 0, rtol=1e-5, atol=atol)[0].astype(int)
        np.testing.assert_array_equal(engine.results_at(atol=float(atol))["a"].unit_inactive_count, want)


def test_grid_size_is_limited():
    with pytest.raises(ValueError, match="at most"):
        StreamingIUA(grid=np.logspace(-12, 2, 300))
