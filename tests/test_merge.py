"""Merge of analyses: the merge of shards equals one run over all inputs, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iua_widgets import IUA, StreamingIUA
from iua_widgets.engine.merge import merge_states
from iua_widgets.engine.state import capture, restore
from tests.analysis_compare import assert_same_analysis, feed, make_batches, run
from tests.reference import brute_force


@pytest.mark.parametrize("per_input", ["grid", "start", "none"])
@pytest.mark.parametrize("unit", ["element", "channel"])
def test_merge_equals_single_run(unit, per_input):
    batches = make_batches(31, [5, 1, 12, 7, 3, 9])
    shards = [batches[:2], batches[2:3], batches[3:]]
    parts = [IUA(run(shard, unit=unit, per_input=per_input)) for shard in shards]

    merged = IUA.merge(*parts)

    assert isinstance(merged, IUA)
    assert_same_analysis(merged, run(batches, unit=unit, per_input=per_input))
    assert merged.engine.batches_seen == 6


def test_merge_matches_brute_force():
    batches = make_batches(32, [6, 4, 5], dtype=np.float64)
    merged = StreamingIUA.merge(run(batches[:1]), run(batches[1:]))

    for atol in (0.0, 2e-12, 1e-8, 1e-2, 100.0):
        reference = brute_force(batches, atol)
        results = merged.results_at(atol=atol)
        for name, expected in reference.items():
            np.testing.assert_array_equal(results[name].inactive, expected["inactive"])
            np.testing.assert_array_equal(results[name].unit_inactive_count, expected["unit"])
            assert results[name].mean_inactive == np.mean(expected["inactive"])
            assert results[name].std_inactive == np.std(expected["inactive"])


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 6), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 6), max_size=3),
    seed=st.integers(0, 2**16),
)
def test_merge_any_split(sizes, cuts, seed):
    batches = make_batches(seed, sizes, layers={"a": (2, 3), "b": (1,)})
    bounds = sorted({0, len(batches), *(min(c, len(batches)) for c in cuts)})
    parts = [run(batches[s:e], per_input="grid") for s, e in zip(bounds, bounds[1:])]

    assert_same_analysis(StreamingIUA.merge(*parts), run(batches, per_input="grid"))


def test_layer_in_some_parts_keeps_own_inputs():
    first = make_batches(33, [4, 3])
    second = make_batches(34, [5], layers={"fc": (6,), "head": (2,)})
    merged = StreamingIUA.merge(run(first), run(second))

    assert merged.layer_names == ["conv", "fc", "head"]
    assert merged.results["conv"].inputs == 7
    assert merged.results["fc"].inputs == 12
    assert merged.results["head"].inputs == 5
    assert merged.inputs_seen == 12
    assert_same_analysis(merged, run(first + second))


def test_instance_call_and_mixed_kinds():
    batches = make_batches(35, [3, 4, 2])
    a, b, c = run(batches[:1]), IUA(run(batches[1:2])), run(batches[2:])

    from_instance = a.merge(b, c)
    from_class = IUA.merge(IUA(a), b, c)

    assert isinstance(from_instance, StreamingIUA)
    assert_same_analysis(from_instance, run(batches))
    assert_same_analysis(from_class, run(batches))


@pytest.mark.parametrize("per_input", ["grid", "start"])
def test_merge_device_and_host_engines(per_input):
    batches = make_batches(40, [4, 6, 3])
    on_device = run(batches[:2], torch_device="cpu", per_input=per_input)
    on_host = run(batches[2:], per_input=per_input)

    assert_same_analysis(StreamingIUA.merge(on_device, on_host), run(batches, per_input=per_input))


def test_parts_unchanged_and_result_resumes():
    batches = make_batches(36, [3, 4, 5])
    a, b = run(batches[:1]), run(batches[1:2])
    a_before, b_before = run(batches[:1]), run(batches[1:2])

    merged = feed(a.merge(b), batches[2:])

    assert_same_analysis(a, a_before)
    assert_same_analysis(b, b_before)
    assert_same_analysis(merged, run(batches))


def test_merge_of_saved_shards(tmp_path):
    batches = make_batches(37, [4, 6, 2])
    paths = [run([batch]).save(tmp_path / f"shard{i}.npz") for i, batch in enumerate(batches)]

    merged = IUA.merge(*(IUA.load(path) for path in paths))

    assert_same_analysis(merged, run(batches))


def test_single_part_is_a_copy():
    engine = run(make_batches(38, [4]))
    copy = StreamingIUA.merge(engine)

    assert copy is not engine
    assert_same_analysis(copy, engine)


@pytest.mark.parametrize(
    ("setting", "other"),
    [
        ("unit", "channel"),
        ("channel_axis", -1),
        ("rtol", 1e-3),
        ("atol", 1e-6),
        ("per_input", "none"),
    ],
)
def test_mismatched_settings_raise(setting, other):
    batches = make_batches(39, [3, 3])
    a = run(batches[:1])
    b = run(batches[1:], **{setting: other})

    with pytest.raises(ValueError, match=f"part 2 has {setting}="):
        StreamingIUA.merge(a, b)


def test_mismatched_unit_shape_raises():
    a = run([{"fc": np.zeros((2, 3))}])
    b = run([{"fc": np.zeros((2, 4))}])

    with pytest.raises(ValueError, match=r"response 'fc'.*\(4,\).*\(3,\)"):
        StreamingIUA.merge(a, b)


def test_mismatched_grid_raises():
    a = capture(run([{"fc": np.zeros((2, 3))}]))
    b = capture(run([{"fc": np.zeros((2, 3))}]))
    b.grid = b.grid.copy()
    b.grid[-1] = 1e3

    with pytest.raises(ValueError, match="threshold grid"):
        StreamingIUA.merge(restore(a), restore(b))


def test_promotes_cumulative_past_uint32():
    a = capture(run([{"fc": np.zeros((3, 2))}]))
    b = capture(run([{"fc": np.zeros((2, 2))}]))
    for state, inputs in ((a, 2**32 - 2), (b, 2)):
        layer = state.layers[0]
        layer.inputs = inputs
        layer.cumulative[:] = inputs
        layer.count_sums = [2 * inputs] * len(state.grid)
        layer.count_square_sums = [4 * inputs] * len(state.grid)
        layer.inactive = None
        state.per_input = "none"
        state.inputs_seen = inputs

    merged = merge_states([a, b])

    assert merged.layers[0].cumulative.dtype == np.int64
    assert int(merged.layers[0].cumulative.max()) == 2**32
    assert merged.layers[0].inputs == 2**32
    assert merged.layers[0].count_square_sums[0] == 4 * 2**32
    assert merge_states([a]).layers[0].cumulative.dtype == np.uint32


def test_merge_nothing_raises():
    with pytest.raises(ValueError, match="at least one"):
        merge_states([])
