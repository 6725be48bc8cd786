"""``iua_widgets.dask.introspect`` against the single-process analysis of the same arrays."""

from __future__ import annotations

import importlib
import sys
import threading
import warnings

import dask.array as da
import numpy as np
import pytest

from iua_widgets import IUA
from iua_widgets.dask import introspect
from tests.analysis_compare import assert_same_analysis, make_batches, run

# The data contains NaN and inf on purpose; test_nonfinite_warned_once_per_layer checks the warning.
pytestmark = pytest.mark.filterwarnings("ignore:Response .* NaN or infinite:RuntimeWarning")


def dataset(seed: int, inputs: int, layers=None) -> dict[str, np.ndarray]:
    """Whole-dataset arrays with zeros, grid values, NaN and inf."""
    kwargs = {} if layers is None else {"layers": layers}
    return make_batches(seed, [inputs], **kwargs)[0]


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
@pytest.mark.parametrize(
    ("unit", "per_input"), [("element", "grid"), ("channel", "start"), ("element", "none")]
)
def test_matches_single_process(scheduler, unit, per_input):
    arrays = dataset(61, 50)
    chunked = {name: da.from_array(a, chunks=((7, 5, 13, 1, 24), *a.shape[1:])) for name, a in arrays.items()}

    result = introspect(chunked, unit=unit, per_input=per_input, scheduler=scheduler)

    assert isinstance(result, IUA)
    assert_same_analysis(result, run([arrays], unit=unit, per_input=per_input))
    assert result.engine.batches_seen == 5


def test_deep_tree_reduction():
    arrays = dataset(62, 61, layers={"fc": (9,)})
    chunked = {"fc": da.from_array(arrays["fc"], chunks=(3, 9))}

    result = introspect(chunked, split_every=2, scheduler="synchronous", atol=5e-3)

    assert_same_analysis(result, run([arrays], atol=5e-3))


def test_rechunks_unit_axes_and_input_chunks(caplog):
    arrays = dataset(63, 30)
    chunked = {
        "conv": da.from_array(arrays["conv"], chunks=(10, 1, 2, 4)),
        "fc": da.from_array(arrays["fc"], chunks=(4, 6)),
    }

    with caplog.at_level("INFO", logger="iua_widgets.dask"):
        result = introspect(chunked, scheduler="threads")

    assert_same_analysis(result, run([arrays]))
    assert result.engine.batches_seen == 3
    assert "Rechunking response 'conv' to whole inputs" in caplog.text
    assert "Rechunking response 'fc' along the input axis" in caplog.text


class RecordingArray:
    """An array-like that records every read, so a test can see what each task loaded."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self.shape = values.shape
        self.dtype = values.dtype
        self.ndim = values.ndim
        self.rows_read: list[int] = []
        self._lock = threading.Lock()

    def __getitem__(self, index):
        block = self.values[index]
        with self._lock:
            self.rows_read.append(block.shape[0] if block.ndim else 1)
        return block

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the whole array was materialised")


def test_reads_one_chunk_at_a_time():
    arrays = dataset(64, 40)
    recorders = {name: RecordingArray(a) for name, a in arrays.items()}
    chunked = {
        name: da.from_array(r, chunks=(8, *r.shape[1:]), asarray=False)
        for name, r in recorders.items()
    }

    result = introspect(chunked, scheduler="threads")

    assert_same_analysis(result, run([arrays]))
    for recorder in recorders.values():
        assert max(recorder.rows_read) <= 8
        assert sum(recorder.rows_read) == 40


def test_processes_scheduler():
    arrays = dataset(65, 12, layers={"fc": (4,)})
    chunked = {"fc": da.from_array(arrays["fc"], chunks=(5, 4))}

    result = introspect(chunked, scheduler="processes")

    assert_same_analysis(result, run([arrays]))


def test_nonfinite_warned_once_per_layer():
    values = np.zeros((20, 3))
    values[::2, 0] = np.nan
    chunked = {"fc": da.from_array(values, chunks=(2, 3))}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = introspect(chunked, scheduler="threads")

    messages = [str(w.message) for w in caught if "NaN or infinite" in str(w.message)]
    assert messages == [messages[0]]
    assert "'fc' contains 10 NaN" in messages[0]
    assert result.results["fc"].nonfinite == 10


def test_rejects_numpy_array():
    with pytest.raises(TypeError, match="not a Dask array"):
        introspect({"fc": np.zeros((3, 2))})


def test_rejects_unknown_chunks():
    values = da.from_array(np.arange(10.0), chunks=5)
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        introspect({"fc": values[values > 3]})


def test_rejects_differing_inputs():
    with pytest.raises(ValueError, match="'b' has 4 inputs"):
        introspect({"a": da.zeros((3, 2), chunks=2), "b": da.zeros((4, 2), chunks=2)})


def test_rejects_empty_inputs():
    with pytest.raises(ValueError, match="no inputs"):
        introspect({"a": da.zeros((0, 2), chunks=2)})


def test_rejects_empty_mapping():
    with pytest.raises(ValueError, match="non-empty mapping"):
        introspect({})


def test_rejects_bad_split_every():
    with pytest.raises(ValueError, match="split_every"):
        introspect({"a": da.zeros((3, 2), chunks=2)}, split_every=1)


def test_rejects_bad_tolerance():
    with pytest.raises(ValueError, match="atol"):
        introspect({"a": da.zeros((3, 2), chunks=2)}, atol=-1.0)


def test_missing_dask_names_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.setitem(sys.modules, "dask.array", None)
    monkeypatch.delitem(sys.modules, "iua_widgets.dask")

    with pytest.raises(ImportError, match=r'pip install "iua-widgets\[dask\]"'):
        importlib.import_module("iua_widgets.dask")
