"""Fuzzing of the analysis-file loader.

Whatever the bytes, loading either raises ``AnalysisFileError`` or returns
an analysis that is internally consistent. Damaged copies of a valid file
(truncated, bits flipped) load only when the damage missed every byte that
matters, and then they give exactly the original analysis.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from iua_widgets import StreamingIUA
from iua_widgets.engine.persist import AnalysisFileError, encode_state, write_members
from iua_widgets.engine.state import capture
from tests.analysis_compare import assert_same_analysis, make_batches, run

#: Examples per fuzz test; raise IUA_WIDGETS_FUZZ_EXAMPLES for a longer search.
FUZZ = settings(
    max_examples=int(os.environ.get("IUA_WIDGETS_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _build_originals() -> dict[str, StreamingIUA]:
    batches = make_batches(21, [3, 4, 2], layers={"conv": (2, 3, 2), "fc": (4,)})
    batches[2]["late"] = np.array([[0.0, 1.0], [1e-9, np.nan]])
    return {
        "grid": run(batches, per_input="grid"),
        "start": run(batches, per_input="start", unit="channel"),
        "none": run(batches, per_input="none", atol=2e-3),
    }


ORIGINALS = _build_originals()
FILES = {}
with tempfile.TemporaryDirectory() as _folder:
    for _policy, _engine in ORIGINALS.items():
        FILES[_policy] = _engine.save(Path(_folder) / f"{_policy}.npz").read_bytes()
POLICIES = sorted(ORIGINALS)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A folder shared by the examples of one test module."""
    return tmp_path_factory.mktemp("fuzz")


def load_bytes(folder: Path, data: bytes) -> StreamingIUA | None:
    """Load ``data`` from a file; ``None`` when the loader rejects it with AnalysisFileError."""
    path = folder / "fuzzed.npz"
    path.write_bytes(data)
    try:
        return StreamingIUA.load(path)
    except AnalysisFileError as error:
        assert str(path) in str(error)
        return None


def assert_consistent(engine: StreamingIUA) -> None:
    """Check that every grid threshold returns results with counts inside their ranges."""
    for atol in engine.grid:
        for name, result in engine.results_at(atol=float(atol)).items():
            counts = result.unit_inactive_count
            assert result.inputs >= 1
            assert counts.dtype == np.int64
            assert np.all((counts >= 0) & (counts <= result.inputs)), name
            assert 0 <= result.dead_units <= result.units
            assert 0.0 <= result.mean_inactive <= result.units
            assert math.isfinite(result.std_inactive)
            assert result.std_inactive >= 0.0
            if result.inactive is not None:
                assert len(result.inactive) == result.inputs
                assert result.mean_inactive == float(np.mean(result.inactive))


@FUZZ
@given(data=st.binary(max_size=2048), zip_prefix=st.booleans())
def test_random_bytes_rejected(scratch, data, zip_prefix):
    if zip_prefix:
        data = b"PK\x03\x04" + data
    assert load_bytes(scratch, data) is None


@FUZZ
@given(policy=st.sampled_from(POLICIES), fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_file_rejected(scratch, policy, fraction):
    data = FILES[policy]
    assert load_bytes(scratch, data[: int(len(data) * fraction)]) is None


@FUZZ
@given(policy=st.sampled_from(POLICIES), flips=st.lists(st.integers(0, 2**40), min_size=1, max_size=3))
def test_bit_flips_rejected_or_harmless(scratch, policy, flips):
    data = bytearray(FILES[policy])
    for flip in flips:
        position = flip % (len(data) * 8)
        data[position // 8] ^= 1 << (position % 8)
    loaded = load_bytes(scratch, bytes(data))
    if loaded is not None:
        assert_same_analysis(loaded, ORIGINALS[policy])


def _members(policy: str) -> tuple[dict, dict[str, np.ndarray]]:
    return encode_state(capture(ORIGINALS[policy]))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


def _paths(value, prefix=()):
    """Every path into a JSON value, containers included."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


@FUZZ
@given(policy=st.sampled_from(POLICIES), data=st.data())
def test_mutated_metadata_rejected_or_consistent(scratch, policy, data):
    metadata, arrays = _members(policy)
    metadata = copy.deepcopy(metadata)
    paths = [p for p in _paths(metadata) if p]
    path = data.draw(st.sampled_from(paths))
    parent = metadata
    for key in path[:-1]:
        parent = parent[key]
    action = data.draw(st.sampled_from(["replace", "delete", "nudge", "stringify"]))
    old = parent[path[-1]]
    if action == "replace":
        parent[path[-1]] = data.draw(JSON_VALUES)
    elif action == "delete":
        del parent[path[-1]]
    elif action == "nudge" and isinstance(old, int | float) and not isinstance(old, bool):
        parent[path[-1]] = old + data.draw(st.sampled_from([-1, 1, 2**32, -0.5]))
    elif action == "nudge" and isinstance(old, str) and old.isdigit():
        parent[path[-1]] = str(int(old) + data.draw(st.sampled_from([-1, 1, 2**64])))
    else:
        parent[path[-1]] = str(old)
    loaded = load_bytes(scratch, write_members(scratch / "mutated.npz", metadata, arrays).read_bytes())
    if loaded is not None:
        assert_consistent(loaded)


ARRAY_DTYPES = st.sampled_from(["<u4", "<i8", "<i4", "<f8", "|u1", ">i8", "<i2"])


@FUZZ
@given(policy=st.sampled_from(POLICIES), data=st.data())
def test_mutated_arrays_rejected_or_consistent(scratch, policy, data):
    metadata, arrays = _members(policy)
    arrays = {name: array.copy() for name, array in arrays.items()}
    name = data.draw(st.sampled_from(sorted(arrays)))
    action = data.draw(st.sampled_from(["values", "element", "array", "delete", "extra"]))
    original = arrays[name]
    if action == "values" and original.size:
        arrays[name] = np.asarray(data.draw(hnp.arrays(original.dtype, original.shape)))
    elif action == "element" and original.size:
        index = data.draw(st.integers(0, original.size - 1))
        flat = original.reshape(-1)
        flat[index] = data.draw(st.integers(0, int(np.iinfo(original.dtype).max)))
    elif action == "array":
        shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=6))
        arrays[name] = np.asarray(data.draw(hnp.arrays(np.dtype(data.draw(ARRAY_DTYPES)), shape)))
    elif action == "delete":
        del arrays[name]
    else:
        arrays["layer9.extra"] = np.zeros(3, dtype=np.int64)
    loaded = load_bytes(scratch, write_members(scratch / "mutated.npz", metadata, arrays).read_bytes())
    if loaded is not None:
        assert_consistent(loaded)


@pytest.mark.parametrize("policy", POLICIES)
def test_unchanged_members_load_exactly(tmp_path, policy):
    metadata, arrays = _members(policy)
    write_members(tmp_path / "same.npz", metadata, arrays)

    assert_same_analysis(StreamingIUA.load(tmp_path / "same.npz"), ORIGINALS[policy])
